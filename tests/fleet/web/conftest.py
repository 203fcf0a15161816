"""Fixtures of the fleet web tests: a real SQLite database with the fleet schema."""

from __future__ import annotations

import pytest

from fleet.db import Database


def _create_schema(db: Database) -> None:
    """The fleet's real alembic migrations (the same path ``fleet up`` takes)."""
    from fleet.db.migrate import upgrade

    upgrade(db)


@pytest.fixture
def sqlite_db(tmp_path):
    """A file-backed SQLite database with every fleet table created."""
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    _create_schema(db)
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite"])
def web_db(request, sqlite_db):
    """The database the auth and audit tests run on (SQLite; PostgreSQL when its fixture is available)."""
    return sqlite_db
