"""The fleet's core tables: devices, ingested telemetry and events, bundles, rollouts.

Telemetry and events are unique per ``(device_id, seq)`` so replays from a device's spool are stored
once (ingest inserts with ignore-on-conflict). Rollout state is entirely in these tables, so a fleet
manager restarted at any point resumes where it was.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from fleet.db.base import Base

__all__ = [
    "ROLLOUT_STATES",
    "Bundle",
    "Device",
    "Event",
    "Lease",
    "Rollout",
    "RolloutDevice",
    "RolloutWave",
    "Telemetry",
]

# BigInteger ids on PostgreSQL, INTEGER (rowid alias, autoincrement) on SQLite.
BigId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Device(Base):
    """One device as the fleet knows it: identity, liveness, what it runs, what it should run."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile: Mapped[str | None] = mapped_column(String(64), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    group: Mapped[str | None] = mapped_column("group_name", String(64), index=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: when the device last went online (birth); desired state is re-published after it
    online_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    # what it reports (``reported`` / ``status``)
    active_name: Mapped[str | None] = mapped_column(String(128))
    active_version: Mapped[str | None] = mapped_column(String(64))
    previous_name: Mapped[str | None] = mapped_column(String(128))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    ota_state: Mapped[str | None] = mapped_column(String(32))
    reported_rollout_id: Mapped[str | None] = mapped_column(String(64))
    reported_generation: Mapped[int] = mapped_column(Integer, default=0)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    golden_passed: Mapped[bool | None] = mapped_column(Boolean)
    golden: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_error: Mapped[str | None] = mapped_column(Text)
    # what the fleet wants (retained ``desired``); ``desired`` is the exact payload to (re)publish
    desired_name: Mapped[str | None] = mapped_column(String(128))
    desired_version: Mapped[str | None] = mapped_column(String(64))
    desired_rollout_id: Mapped[str | None] = mapped_column(String(64))
    desired_generation: Mapped[int] = mapped_column(Integer, default=0)
    desired: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: False until the current desired payload was acknowledged by the broker (outbox flag)
    desired_published: Mapped[bool] = mapped_column(Boolean, default=True)


class Telemetry(Base):
    """One telemetry message as ingested (``payload`` keeps it whole)."""

    __tablename__ = "telemetry"
    __table_args__ = (
        UniqueConstraint("device_id", "seq"),
        Index("ix_telemetry_device_ts", "device_id", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replayed: Mapped[bool] = mapped_column(Boolean, default=False)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_mb: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    drift: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class Event(Base):
    """One event (OTA step, error, rejected command) as ingested."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("device_id", "seq"),
        Index("ix_events_device_ts", "device_id", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replayed: Mapped[bool] = mapped_column(Boolean, default=False)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    rollout_id: Mapped[str | None] = mapped_column(String(64), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Bundle(Base):
    """A verified bundle in the artifact store (``path`` is relative to the store, by sha256)."""

    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    key_id: Mapped[str | None] = mapped_column(String(32))
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    path: Mapped[str] = mapped_column(String(512))


#: rollout lifecycle; ``completed``, ``halted`` and ``aborted`` are final
ROLLOUT_STATES = ("running", "paused", "completed", "halted", "aborted")


class Rollout(Base):
    """A staged rollout of one bundle to the devices a selector picks."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bundle_name: Mapped[str] = mapped_column(String(128))
    bundle_version: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(String(1024))
    #: cumulative percentages of the target devices, e.g. [1, 10, 50, 100]
    waves: Mapped[list[float]] = mapped_column(JSON)
    soak_s: Mapped[float] = mapped_column(Float)
    max_failure_rate: Mapped[float] = mapped_column(Float)
    max_p95_regression: Mapped[float] = mapped_column(Float)
    max_confidence_drop: Mapped[float] = mapped_column(Float, default=0.15)
    install_timeout_s: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RolloutWave(Base):
    """One wave: ``pending`` → ``installing`` → ``soaking`` → ``passed`` | ``failed``."""

    __tablename__ = "rollout_waves"
    __table_args__ = (UniqueConstraint("rollout_id", "wave_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column("wave_index", Integer)
    percent: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    soak_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: the gate's inputs and verdict (failure rate, error rate, p95 old/new, golden, drift)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RolloutDevice(Base):
    """One device's part in a rollout: its wave, what it ran before, and where its install stands.

    ``state``: ``pending`` (wave not started) → ``desired`` (desired written, waiting) → ``installed`` |
    ``failed``; after a halt, the failed wave's devices become ``rolled_back``.
    """

    __tablename__ = "rollout_devices"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    generation: Mapped[int | None] = mapped_column(Integer)
    previous_name: Mapped[str | None] = mapped_column(String(128))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    #: the desired payload the device had before (restored on rollback)
    previous_desired: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    desired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    installed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A named lease held by one fleet replica at a time (e.g. ``rollouts``: who runs the ticker)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
