"""Fixtures of the fleet web tests: a real SQLite database with the fleet schema."""

from __future__ import annotations

import pytest

from fleet.db import Base, Database


def _create_schema(db: Database) -> None:
    import fleet.db.web_models  # noqa: F401  (registers the web tables on Base)

    Base.metadata.create_all(db.engine)


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
