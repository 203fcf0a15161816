"""Apply the fleet's alembic migrations to a :class:`~fleet.db.base.Database` (SQLite or PostgreSQL).

Configured programmatically (no ``alembic.ini`` to find at run time); the migration scripts ship as
package data under ``fleet/migrations/``. ``fleet up`` calls :func:`upgrade` at start-up.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from edgekit.errors import FleetError
from fleet.db.base import Database

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the latest). Safe to call on every start."""
    cfg = alembic_config()
    try:
        with database.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise FleetError(f"database migration failed on {database.engine.url.render_as_string()}: {exc}") from exc
