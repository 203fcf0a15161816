"""Fleet storage: SQLAlchemy 2 models on one declarative ``Base``; SQLite by default, PostgreSQL for scale."""

from fleet.db.base import Base, Database

__all__ = ["Base", "Database"]
