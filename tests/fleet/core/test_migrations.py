"""The alembic migration creates exactly the schema the models declare (no drift), on SQLite."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import fleet.db.models  # noqa: F401
import fleet.db.web_models  # noqa: F401
from fleet.db.base import Base, Database
from fleet.db.migrate import current_revision, head_revision, upgrade


def test_migration_matches_models(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(db)
    assert current_revision(db) == head_revision()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models changed without a migration: {diff}"
    db.dispose()
