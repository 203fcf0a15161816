"""Named leases in the database: at most one fleet replica holds ``rollouts`` (runs the ticker) at a time.

A holder renews its lease on every tick; if it dies, the lease expires after ``ttl_s`` and another
replica takes over. Acquisition is a single conditional ``UPDATE`` (after an insert-if-absent), so it
is atomic on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, update

from fleet.db.base import Database
from fleet.db.models import Lease

__all__ = ["acquire", "release"]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def acquire(database: Database, name: str, holder: str, ttl_s: float, *, now: datetime | None = None) -> bool:
    """Take or renew lease ``name`` for ``holder`` until ``now + ttl_s``; ``False`` while another holds it."""
    now = now or _now()
    until = now + timedelta(seconds=ttl_s)
    t = Lease.__table__
    with database.session() as s:
        if s.get(Lease, name) is None:  # first use: an already-expired row, so the update below decides
            if s.get_bind().dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            s.execute(insert(t).values(name=name, holder="", expires_at=_EPOCH)
                      .on_conflict_do_nothing(index_elements=["name"]))
        res = s.execute(
            update(t).where(t.c.name == name, or_(t.c.holder == holder, t.c.expires_at < now))
            .values(holder=holder, expires_at=until)
        )
        return res.rowcount == 1


def release(database: Database, name: str, holder: str) -> None:
    """Give the lease up at once (a clean stop), so another replica need not wait for it to expire."""
    t = Lease.__table__
    with database.session() as s:
        s.execute(update(t).where(t.c.name == name, t.c.holder == holder)
                  .values(expires_at=_EPOCH))
