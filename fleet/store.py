"""Writes of ingested MQTT messages: one batch, one transaction, duplicates ignored.

Telemetry and events are inserted with ``INSERT … ON CONFLICT (device_id, seq) DO NOTHING`` so a replay
from a device's spool is stored once and counted as a duplicate: on PostgreSQL through SQLAlchemy Core
(``RETURNING id`` counts what was new), on SQLite through the DBAPI's ``executemany`` with pre-built
tuples in the exact formats SQLAlchemy's types use (UTC datetimes, JSON text, 0/1 booleans), because
per-row parameter processing dominated the ingest's cost. ``status`` and ``reported`` update the device
registry through the ORM; a device seen for the first time on any stream is registered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from edgekit import wire
from fleet.db.models import Device, Event, Telemetry

__all__ = ["BatchResult", "Message", "store_batch", "utc"]


@dataclass(frozen=True)
class Message:
    """One validated message: its stream, device, payload and when the fleet received it."""

    kind: str
    device_id: str
    payload: Any  # an edgekit.wire payload model matching ``kind``
    received_at: datetime


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    #: devices whose birth (``status: online``) was in this batch: their desired state is re-published
    births: list[str] = field(default_factory=list)
    new_devices: list[str] = field(default_factory=list)


def _insert_ignore(dialect: str, table):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def utc(ts: datetime) -> datetime:
    """A device's timestamp in UTC (naive means UTC): SQLite stores datetimes without their offset, so
    every stored time must be UTC for comparisons (gates, windows) to hold."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _telemetry_row(m: Message) -> dict[str, Any]:
    t: wire.Telemetry = m.payload
    payload = t.model_dump(mode="json")
    return {
        "device_id": m.device_id, "seq": t.seq, "ts": utc(t.ts), "received_at": m.received_at, "replayed": t.replayed,
        "model_name": t.model.name if t.model else None, "model_version": t.model.version if t.model else None,
        "requests": t.requests, "errors": t.errors,
        "p50_ms": t.latency.p50_ms, "p95_ms": t.latency.p95_ms, "p99_ms": t.latency.p99_ms,
        "cpu_percent": t.cpu_percent, "memory_mb": t.memory_mb, "temperature_c": t.temperature_c,
        # only telemetry that carries drift statistics fills the column (most rows: NULL, cheaper)
        "drift": payload.get("drift") if _has_drift(t.drift) else None, "payload": payload,
    }


def _has_drift(d: wire.DriftStats) -> bool:
    return bool(d.inputs or d.predictions or d.confidence_mean is not None or d.confidence_p10 is not None)


def _event_row(m: Message) -> dict[str, Any]:
    e: wire.Event = m.payload
    return {
        "device_id": m.device_id, "seq": e.seq, "ts": utc(e.ts), "received_at": m.received_at, "replayed": e.replayed,
        "kind": e.kind, "level": e.level, "message": e.message, "rollout_id": e.rollout_id, "data": e.data,
    }


def _group_from_tags(tags: list[str]) -> str | None:
    for t in tags:
        if t.startswith("group="):
            return t.split("=", 1)[1] or None
    return None


def _sqlite_ts(v: datetime) -> str:
    """A datetime as SQLAlchemy's SQLite ``DateTime`` stores it (UTC, no offset)."""
    v = utc(v)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"


_TELEMETRY_COLS = ("device_id", "seq", "ts", "received_at", "replayed", "model_name", "model_version", "requests",
                   "errors", "p50_ms", "p95_ms", "p99_ms", "cpu_percent", "memory_mb", "temperature_c", "drift",
                   "payload")
_EVENT_COLS = ("device_id", "seq", "ts", "received_at", "replayed", "kind", "level", "message", "rollout_id", "data")


def _telemetry_tuple(m: Message, received: str) -> tuple:
    t: wire.Telemetry = m.payload
    lat = t.latency
    return (m.device_id, t.seq, _sqlite_ts(t.ts), received, int(t.replayed),
            t.model.name if t.model else None, t.model.version if t.model else None, t.requests, t.errors,
            lat.p50_ms, lat.p95_ms, lat.p99_ms, t.cpu_percent, t.memory_mb, t.temperature_c,
            t.drift.model_dump_json() if _has_drift(t.drift) else None, t.model_dump_json())


def _event_tuple(m: Message, received: str) -> tuple:
    e: wire.Event = m.payload
    return (m.device_id, e.seq, _sqlite_ts(e.ts), received, int(e.replayed), e.kind, e.level, e.message,
            e.rollout_id, json.dumps(e.data))


def _sqlite_insert_ignore(conn, table, cols: tuple[str, ...], values: list[tuple]) -> int:
    """``INSERT … ON CONFLICT DO NOTHING`` through the DBAPI's ``executemany`` (the ingest's hot path on
    SQLite): several times cheaper than SQLAlchemy's per-row parameter processing; returns rows inserted."""
    sql = (f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
           "ON CONFLICT (device_id, seq) DO NOTHING")
    return conn.exec_driver_sql(sql, values).rowcount


def store_batch(s: Session, messages: Sequence[Message]) -> BatchResult:
    """Store ``messages`` in the session's transaction; returns what was stored and what was a duplicate.

    The hot path (telemetry, events, ``last_seen``) is plain Core ``executemany``; only ``status`` and
    ``reported`` go through the ORM, one device row each.
    """
    res = BatchResult()
    if not messages:
        return res
    conn = s.connection()
    dialect = conn.dialect.name
    insert = _insert_ignore

    # register devices seen for the first time (on any stream)
    first: dict[str, Message] = {}
    last_seen: dict[str, datetime] = {}
    for m in messages:
        first.setdefault(m.device_id, m)
        if m.received_at > last_seen.get(m.device_id, m.received_at) or m.device_id not in last_seen:
            last_seen[m.device_id] = m.received_at
    ids = list(first)
    known = set(conn.execute(select(Device.id).where(Device.id.in_(ids))).scalars())
    new_rows = []
    for device_id in ids:
        if device_id in known:
            continue
        m = first[device_id]
        model = getattr(m.payload, "model", None) if m.kind == "telemetry" else None
        new_rows.append({
            "id": device_id, "tags": [], "online": False, "first_seen": m.received_at, "last_seen": m.received_at,
            "reported_generation": 0, "desired_generation": 0, "desired_published": True,
            "active_name": model.name if model else None, "active_version": model.version if model else None,
        })
    if new_rows:
        inserted = conn.execute(insert(dialect, Device.__table__).on_conflict_do_nothing(index_elements=["id"])
                                .returning(Device.__table__.c.id), new_rows).scalars().all()
        res.new_devices.extend(inserted)

    for kind, table in (("telemetry", Telemetry.__table__), ("events", Event.__table__)):
        mine = [m for m in messages if m.kind == kind]
        if not mine:
            continue
        if dialect == "sqlite":
            received = {id(m): _sqlite_ts(m.received_at) for m in mine}
            if kind == "telemetry":
                stored = _sqlite_insert_ignore(conn, table, _TELEMETRY_COLS,
                                               [_telemetry_tuple(m, received[id(m)]) for m in mine])
            else:
                stored = _sqlite_insert_ignore(conn, table, _EVENT_COLS,
                                               [_event_tuple(m, received[id(m)]) for m in mine])
        else:
            rows = [_telemetry_row(m) if kind == "telemetry" else _event_row(m) for m in mine]
            stmt = insert(dialect, table).on_conflict_do_nothing(index_elements=["device_id", "seq"])
            stored = len(conn.execute(stmt.returning(table.c.id), rows).all())
        res.stored += stored
        res.duplicates += len(mine) - stored

    dev = Device.__table__
    conn.execute(
        update(dev).where(dev.c.id == bindparam("did"), or_(dev.c.last_seen.is_(None), dev.c.last_seen < bindparam("ls")))
        .values(last_seen=bindparam("ls")),
        [{"did": d, "ls": ts} for d, ts in last_seen.items()],
    )

    stateful = [m for m in messages if m.kind in ("status", "reported")]
    if stateful:
        devices = {d.id: d for d in s.scalars(select(Device).where(Device.id.in_({m.device_id for m in stateful})))}
        for m in stateful:
            d = devices[m.device_id]
            if m.kind == "status":
                _apply_status(d, m.payload, m.received_at, res)
            else:
                _apply_reported(d, m.payload, m.received_at)
            res.stored += 1
    return res


def _apply_status(d: Device, st: wire.Status, received_at: datetime, res: BatchResult) -> None:
    if st.state == "online":
        if not d.online:
            res.births.append(d.id)
        d.online, d.online_since = True, received_at
        if st.agent_version:
            d.agent_version = st.agent_version
        if st.profile:
            d.profile = st.profile
        if st.tags:
            # device-declared tags are added to those an operator set through the API, never replace them
            current = list(d.tags or [])
            d.tags = current + [t for t in st.tags if t not in current]
            d.group = _group_from_tags(st.tags) or d.group
        if st.model is not None:
            d.active_name, d.active_version = st.model.name, st.model.version
    else:
        d.online = False


def _apply_reported(d: Device, r: wire.Reported, received_at: datetime) -> None:
    if r.active is not None:
        d.active_name, d.active_version = r.active.name, r.active.version
    if r.previous is not None:
        d.previous_name, d.previous_version = r.previous.name, r.previous.version
    d.ota_state = r.ota_state
    d.reported_rollout_id = r.rollout_id
    d.reported_generation = r.generation
    d.reported_at = received_at
    d.golden = r.golden.model_dump(mode="json") if r.golden is not None else None
    d.golden_passed = r.golden.passed if r.golden is not None else None
    d.last_error = r.last_error
