"""Helpers shared by the fleet web tests (imported by module name; this folder is on sys.path)."""

from __future__ import annotations

from sqlalchemy import text

__all__ = ["drop_guards"]


def drop_guards(db) -> None:
    """What an attacker with DDL rights would do first."""
    with db.engine.begin() as c:
        if db.engine.dialect.name == "sqlite":
            c.execute(text("DROP TRIGGER IF EXISTS audit_log_no_update"))
            c.execute(text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
        else:
            c.execute(text("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log"))
            c.execute(text("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log"))
