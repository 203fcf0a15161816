"""The append-only, hash-chained audit log of every admin action.

Each entry's ``hash`` is the sha256 of its canonical JSON (seq, ts, actor, action, target, details and
``prev_hash``, the previous entry's hash; the first entry chains to 64 zeros). :func:`verify_chain`
recomputes the chain and names the first entry that was edited, deleted or reordered. Truncating the
*tail* leaves a valid shorter chain: pass a previously noted head (``expected_head``) to catch that too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgekit.errors import FleetError
from edgekit.manifest import canonical_json
from fleet.db.web_models import AuditEntry

__all__ = ["GENESIS", "ChainReport", "enforce_append_only", "entry_hash", "head", "record", "verify_chain"]

GENESIS = "0" * 64
_PG_LOCK_KEY = 0x6564676B6974  # "edgkit": serialises appends across fleet replicas on PostgreSQL


def _ts_text(ts: datetime) -> str:
    if ts.tzinfo is None:  # SQLite returns naive datetimes; they were written as UTC
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(seq: int, ts: datetime, actor: str, action: str, target: str, details: dict[str, Any],
               prev_hash: str) -> str:
    """The sha256 of one entry's canonical form."""
    body = {"seq": seq, "ts": _ts_text(ts), "actor": actor, "action": action, "target": target,
            "details": details, "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _normalise(details: dict[str, Any] | None) -> dict[str, Any]:
    """JSON round trip so what is hashed equals what the JSON column gives back."""
    if details is None:
        return {}
    if not isinstance(details, dict):
        raise FleetError("audit details must be a JSON object")
    return json.loads(json.dumps(details, default=str, sort_keys=True))


@contextmanager
def _scope(where: Session | Any) -> Iterator[Session]:
    """``where`` is a Session (used as is: its transaction decides), or a FleetContext / Database
    (a transaction of its own, committed on return)."""
    if isinstance(where, Session):
        yield where
        return
    db = getattr(where, "database", where)
    if not hasattr(db, "session"):
        raise FleetError(f"audit needs a Session, a Database or a FleetContext, not {type(where).__name__}")
    with db.session() as s:
        yield s


def record(where: Session | Any, actor: str, action: str, target: str,
           details: dict[str, Any] | None = None) -> AuditEntry:
    """Append one entry. Given a Session, inside its transaction (it commits with the action it
    records); given a FleetContext or Database, in a transaction of its own."""
    details = _normalise(details)
    with _scope(where) as session:
        return _append(session, actor, action, target, details)


def _append(session: Session, actor: str, action: str, target: str, details: dict[str, Any]) -> AuditEntry:
    _lock_for_append(session)
    seq, prev = _head(session)
    seq += 1
    ts = datetime.now(timezone.utc)
    actor, action, target = actor[:128], action[:64], target[:256]
    entry = AuditEntry(seq=seq, ts=ts, actor=actor, action=action, target=target, details=details,
                       prev_hash=prev, hash=entry_hash(seq, ts, actor, action, target, details, prev))
    session.add(entry)
    try:
        session.flush()
    except IntegrityError as exc:
        raise FleetError(f"could not append audit entry {seq}: another writer took it ({exc.orig})") from exc
    return entry


def _lock_for_append(session: Session) -> None:
    """Hold the database's write lock for the rest of the transaction, so reading the head and
    appending after it is atomic across threads, processes and fleet replicas."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    elif dialect == "sqlite":
        # a write statement takes SQLite's single RESERVED lock (waiting up to busy_timeout) and opens
        # the transaction; it changes nothing
        session.execute(text("UPDATE audit_log SET seq = seq WHERE 1 = 0"))


_SQLITE_GUARDS = [
    f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
    for verb in ("UPDATE", "DELETE")
]
_PG_GUARDS = [
    "CREATE OR REPLACE FUNCTION edgekit_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
    "CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION edgekit_audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION edgekit_audit_append_only()",
]


def enforce_append_only(where: Session | Any) -> None:
    """Install database triggers that refuse UPDATE, DELETE (and TRUNCATE on PostgreSQL) of audit
    entries (idempotent). Someone with DDL rights can still drop them: the hash chain is what detects
    that; the triggers stop accidents and casual edits."""
    with _scope(where) as session:
        dialect = session.get_bind().dialect.name
        stmts = _SQLITE_GUARDS if dialect == "sqlite" else _PG_GUARDS if dialect == "postgresql" else []
        if dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})  # replicas race
        for stmt in stmts:
            session.execute(text(stmt))


@dataclass(frozen=True)
class ChainReport:
    """Result of :func:`verify_chain`: ``ok``, how many entries were checked, and the first problem."""

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    error: str | None = None
    bad_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "error": self.error, "bad_seq": self.bad_seq}


def head(where: Session | Any) -> tuple[int, str]:
    """``(seq, hash)`` of the newest entry (``(0, GENESIS)`` when empty): note it to detect truncation."""
    with _scope(where) as session:
        return _head(session)


def _head(session: Session) -> tuple[int, str]:
    row = session.execute(select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (0, GENESIS)


def verify_chain(where: Session | Any, *, expected_head: tuple[int, str] | None = None,
                 batch: int = 1000) -> ChainReport:
    """Recompute every hash in order; report the first edited, deleted or reordered entry.

    ``where``: a Session, a Database or a FleetContext.
    """
    with _scope(where) as session:
        return _verify(session, expected_head, batch)


def _verify(session: Session, expected_head: tuple[int, str] | None, batch: int) -> ChainReport:
    prev, expect_seq, count = GENESIS, 1, 0
    last_seq = 0
    total = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
    while True:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.seq >= expect_seq).order_by(AuditEntry.seq).limit(batch)
        ).all()
        if not rows:
            break
        for e in rows:
            if e.seq != expect_seq:
                return ChainReport(False, count, last_seq, prev,
                                   f"entries {expect_seq}..{e.seq - 1} are missing (deleted)", expect_seq)
            if e.prev_hash != prev:
                return ChainReport(False, count, last_seq, prev,
                                   f"entry {e.seq} does not chain to entry {e.seq - 1} (reordered or replaced)", e.seq)
            recomputed = entry_hash(e.seq, e.ts, e.actor, e.action, e.target, e.details or {}, e.prev_hash)
            if recomputed != e.hash:
                return ChainReport(False, count, last_seq, prev,
                                   f"entry {e.seq} was modified (its content no longer matches its hash)", e.seq)
            prev, last_seq, expect_seq, count = e.hash, e.seq, e.seq + 1, count + 1
    if count != total:
        return ChainReport(False, count, last_seq, prev,
                           f"{total - count} entries lie outside the sequence 1..{last_seq} (inserted or renumbered)",
                           last_seq + 1)
    if expected_head is not None:
        want_seq, want_hash = expected_head
        if last_seq < want_seq:
            return ChainReport(False, count, last_seq, prev,
                               f"log ends at entry {last_seq} but entry {want_seq} was noted (tail truncated)", last_seq + 1)
        stored = session.scalar(select(AuditEntry.hash).where(AuditEntry.seq == want_seq)) if want_seq else GENESIS
        if stored != want_hash:
            return ChainReport(False, count, last_seq, prev,
                               f"entry {want_seq} differs from the noted head (history rewritten)", want_seq)
    return ChainReport(True, count, last_seq, prev)
