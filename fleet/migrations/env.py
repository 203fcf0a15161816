"""Alembic environment: migrates the connection handed in by :func:`fleet.db.migrate.upgrade`.

Imports every module that defines tables on the shared ``Base`` so autogenerate sees all of them.
"""

from __future__ import annotations

from alembic import context

import fleet.db.models  # noqa: F401  (registers the core tables)
import fleet.db.web_models  # noqa: F401  (registers fleet-web's tables)
from fleet.db.base import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("fleet migrations run through fleet.db.migrate.upgrade(database), not the alembic CLI")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; use fleet.db.migrate.upgrade")
run_migrations_online()
