"""Copy ingested telemetry and events into Apache Iceberg tables, in batches, exactly once.

Each batch is one Iceberg append whose snapshot summary carries ``edgekit.high-water-id`` (the largest
source-row id it holds); only after that commit is the database watermark (:class:`SyncWatermark`)
advanced. A crash between the two leaves a commit without its watermark: the next run reads the
high-water id back from the table's snapshots and advances the watermark before selecting rows, so
nothing is appended twice. Two syncing replicas are kept apart by Iceberg's optimistic commit (an
append on a stale snapshot fails and is retried on the next run). Tables are partitioned by day of
the device timestamp. Watermarks are kept per destination (catalog, warehouse, namespace), and only
*settled* ids are copied (see :meth:`IcebergSync.sync`), so a row committed late behind a higher id
is never skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BooleanType,
    DoubleType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import defer

from edgekit.errors import ConfigError, FleetError
from fleet.analytics.settings import AnalyticsSettings
from fleet.db.models import Event, Telemetry
from fleet.db.web_models import SyncWatermark

if TYPE_CHECKING:
    from fleet.context import FleetContext
    from fleet.db.base import Database

__all__ = ["HIGH_WATER", "TABLES", "BackgroundSync", "IcebergSync", "SyncResult", "run_sync_loop", "sync_once"]

log = logging.getLogger(__name__)

#: snapshot-summary property holding the largest source-row id an append carried
HIGH_WATER = "edgekit.high-water-id"
_EXPIRE_EVERY_S = 3600.0


def _f(i: int, name: str, typ: Any, required: bool = False) -> NestedField:
    return NestedField(field_id=i, name=name, field_type=typ, required=required)


_COMMON = [
    _f(1, "id", LongType(), True),
    _f(2, "device_id", StringType(), True),
    _f(3, "seq", LongType(), True),
    _f(4, "ts", TimestamptzType(), True),
    _f(5, "received_at", TimestamptzType()),
    _f(6, "replayed", BooleanType()),
]

TELEMETRY_SCHEMA = Schema(
    *_COMMON,
    _f(7, "model_name", StringType()),
    _f(8, "model_version", StringType()),
    _f(9, "requests", LongType()),
    _f(10, "errors", LongType()),
    _f(11, "p50_ms", DoubleType()),
    _f(12, "p95_ms", DoubleType()),
    _f(13, "p99_ms", DoubleType()),
    _f(14, "cpu_percent", DoubleType()),
    _f(15, "memory_mb", DoubleType()),
    _f(16, "temperature_c", DoubleType()),
    _f(17, "drift_json", StringType()),
)

EVENTS_SCHEMA = Schema(
    *_COMMON,
    _f(7, "kind", StringType()),
    _f(8, "level", StringType()),
    _f(9, "message", StringType()),
    _f(10, "rollout_id", StringType()),
    _f(11, "data_json", StringType()),
)


def _day_spec() -> PartitionSpec:
    return PartitionSpec(PartitionField(source_id=4, field_id=1000, transform=DayTransform(), name="ts_day"))


def _utc(ts: datetime | None) -> datetime | None:
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=True, separators=(",", ":"))


def _common(r: Telemetry | Event) -> dict[str, Any]:
    return {"id": r.id, "device_id": r.device_id, "seq": r.seq, "ts": _utc(r.ts),
            "received_at": _utc(r.received_at), "replayed": bool(r.replayed)}


def _telemetry_row(r: Telemetry) -> dict[str, Any]:
    return {**_common(r), "model_name": r.model_name, "model_version": r.model_version,
            "requests": r.requests, "errors": r.errors, "p50_ms": r.p50_ms, "p95_ms": r.p95_ms,
            "p99_ms": r.p99_ms, "cpu_percent": r.cpu_percent, "memory_mb": r.memory_mb,
            "temperature_c": r.temperature_c, "drift_json": _json(r.drift)}


def _event_row(r: Event) -> dict[str, Any]:
    return {**_common(r), "kind": r.kind, "level": r.level, "message": r.message,
            "rollout_id": r.rollout_id, "data_json": _json(r.data)}


@dataclass(frozen=True)
class _TableSpec:
    name: str
    model: type
    schema: Schema
    to_row: Callable[[Any], dict[str, Any]]


#: source table → Iceberg table (same name, in the configured namespace)
TABLES: tuple[_TableSpec, ...] = (
    _TableSpec("telemetry", Telemetry, TELEMETRY_SCHEMA, _telemetry_row),
    _TableSpec("events", Event, EVENTS_SCHEMA, _event_row),
)


@dataclass(frozen=True)
class SyncResult:
    """Rows appended per table in one :meth:`IcebergSync.sync` call (``total`` sums them)."""

    rows: dict[str, int]
    #: watermarks advanced from a commit that had landed without its watermark (crash recovery)
    recovered: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class IcebergSync:
    """Syncs one fleet database into one Iceberg catalog; safe to call repeatedly and after a crash."""

    def __init__(self, database: Database, settings: AnalyticsSettings, data_dir: Path):
        self.database = database
        self.settings = settings
        self.properties = settings.catalog_properties(data_dir)
        self._catalog: Catalog | None = None
        #: test seam: called between the Iceberg commit and the watermark write (simulate a crash)
        self.after_commit: Callable[[str, int], None] | None = None
        #: test seams for the settle logic
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep
        #: per table: (largest id seen, when) observations not yet settled, oldest first
        self._seen: dict[str, list[tuple[int, float]]] = {}
        self._last_expiry: dict[str, float] = {}

    @property
    def settle_s(self) -> float:
        """The configured settle time, or 0 on SQLite (one writer: ids commit in order), 5 s elsewhere."""
        if self.settings.settle_s is not None:
            return self.settings.settle_s
        return 0.0 if self.database.engine.dialect.name == "sqlite" else 5.0

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            for attempt in (1, 2):
                try:
                    self._catalog = load_catalog(self.settings.catalog_name, **self.properties)
                    break
                except Exception as exc:  # pyiceberg raises many types for a bad catalog config
                    # a SQL catalog creates its tables on first open; a second process opening it at the
                    # same moment loses that race once ("table ... already exists"): open it again
                    if attempt == 1 and "already exists" in str(exc):
                        continue
                    raise ConfigError(f"cannot open Iceberg catalog {self.settings.catalog_name!r} "
                                      f"({self.properties.get('type', '?')}): {exc}") from exc
        return self._catalog

    def identifier(self, table: str) -> str:
        return f"{self.settings.namespace}.{table}"

    def table(self, spec: _TableSpec) -> Table:
        """Load (creating on first use) the Iceberg table of ``spec``; a table written by an older
        edgekit gains the columns added since (schema evolution by name, never a rewrite)."""
        self.catalog.create_namespace_if_not_exists(self.settings.namespace)
        table = self.catalog.create_table_if_not_exists(
            self.identifier(spec.name), schema=spec.schema, partition_spec=_day_spec()
        )
        have = {f.name for f in table.schema().fields}
        missing = [f.name for f in spec.schema.fields if f.name not in have]
        if missing:
            log.info("analytics: adding column(s) %s to %s", ", ".join(missing), self.identifier(spec.name))
            with table.update_schema() as update:
                update.union_by_name(spec.schema)
            table = self.catalog.load_table(self.identifier(spec.name))
        return table

    def sync(self, *, wait: bool = True) -> SyncResult:
        """Append every settled row past each table's watermark; returns the rows written.

        A row is *settled* once the largest id seen at least ``settle_s`` ago is ≥ its id: every
        transaction that could still commit a lower id has then finished (PostgreSQL allocates ids
        before commit, so a higher id can become visible first). The first call of a new syncer has
        no such observation: with ``wait`` it observes, sleeps ``settle_s`` and goes on; without, it
        only observes (the background loop's next run picks the rows up).
        """
        rows: dict[str, int] = {}
        recovered: dict[str, int] = {}
        caps = self._settled_caps(wait=wait)
        for spec in TABLES:
            rows[spec.name], rec = self._sync_table(spec, caps[spec.name])
            if rec is not None:
                recovered[spec.name] = rec
            if rows[spec.name]:
                self._expire_snapshots(spec)
        return SyncResult(rows, recovered)

    def _expire_snapshots(self, spec: _TableSpec) -> None:
        """Expire snapshots older than ``expire_snapshots_after_s`` (at most hourly per table). The
        current snapshot always stays, and it carries the largest high-water id, so recovery still
        works. Housekeeping: a failure is logged, never raised."""
        keep = self.settings.expire_snapshots_after_s
        now = self.clock()
        if keep is None or now - self._last_expiry.get(spec.name, -math.inf) < _EXPIRE_EVERY_S:
            return
        self._last_expiry[spec.name] = now
        try:
            table = self.table(spec)
            cutoff = datetime.now(timezone.utc) - timedelta(seconds=keep)
            table.maintenance.expire_snapshots().older_than(cutoff).commit()
        except Exception as exc:  # housekeeping must never stop the sync (another replica may race it)
            log.warning("analytics: expiring old snapshots of %s failed: %s", spec.name, exc)

    def _settled_caps(self, *, wait: bool) -> dict[str, int]:
        """Per table, the largest id it is safe to sync now (see :meth:`sync`)."""
        with self.database.session() as s:
            current = {spec.name: s.scalar(select(func.max(spec.model.id))) or 0 for spec in TABLES}
        settle = self.settle_s
        if settle <= 0:
            return current
        now = self.clock()
        if wait and any(not self._seen.get(name) for name in current):
            for name, cur in current.items():
                self._seen.setdefault(name, []).append((cur, now))
            self.sleep(settle)  # once, for every table
            now = self.clock()
        return {name: self._observe(name, cur, now, settle) for name, cur in current.items()}

    def _observe(self, name: str, current: int, now: float, settle: float) -> int:
        seen = self._seen.setdefault(name, [])
        settled = [obs for obs in seen if now - obs[1] >= settle]
        cap = max((i for i, _ in settled), default=0)
        # keep the newest settled observation and the younger ones; record what is visible now
        kept = ([max(settled)] if settled else []) + [o for o in seen if now - o[1] < settle]
        if not kept or current > kept[-1][0]:
            kept.append((current, now))
        self._seen[name] = kept
        return cap

    # -- one table ---------------------------------------------------------------------------------

    def _sync_table(self, spec: _TableSpec, cap: int) -> tuple[int, int | None]:
        written, recovered_to = 0, None
        while True:
            table = self.table(spec)  # fresh metadata: commits below assert this snapshot is current
            watermark = self.watermark(spec.name)
            committed = committed_high_water(table)
            if committed > watermark:
                log.warning("analytics: %s commit up to id %d landed without its watermark (%d); advancing",
                            spec.name, committed, watermark)
                self._set_watermark(spec.name, committed)
                watermark, recovered_to = committed, committed
            batch = self._read_batch(spec, watermark, cap)
            if not batch:
                return written, recovered_to
            high = batch[-1]["id"]
            data = pa.Table.from_pylist(batch, schema=spec.schema.as_arrow())
            try:
                table.append(data, snapshot_properties={HIGH_WATER: str(high)})
            except CommitFailedException as exc:
                # another replica committed first; its rows are not ours to repeat
                log.info("analytics: %s append lost a commit race (%s); retrying next run", spec.name, exc)
                return written, recovered_to
            if self.after_commit is not None:
                self.after_commit(spec.name, high)
            self._set_watermark(spec.name, high)
            written += len(batch)
            if len(batch) < self.settings.batch_size:
                return written, recovered_to

    def watermark_key(self, name: str) -> str:
        """The watermark row of table ``name`` *for this destination* (catalog, warehouse, namespace):
        pointing the sync at a new catalog starts that catalog from the first row, not from where
        another destination stopped."""
        p = self.properties
        dest = "|".join([p.get("type", ""), p.get("uri", ""), p.get("warehouse", ""), self.settings.namespace])
        return f"{name}:{hashlib.sha256(dest.encode()).hexdigest()[:16]}"

    def watermark(self, name: str) -> int:
        """The last source id synced into table ``name`` of this destination (0 before the first)."""
        with self.database.session() as s:
            row = s.get(SyncWatermark, self.watermark_key(name))
            return row.last_id if row is not None else 0

    def _set_watermark(self, name: str, last_id: int) -> None:
        key = self.watermark_key(name)
        with self.database.session() as s:
            row = s.get(SyncWatermark, key)
            if row is None:
                s.add(SyncWatermark(table_name=key, last_id=last_id))
            elif last_id > row.last_id:  # never move backwards
                row.last_id = last_id

    def _read_batch(self, spec: _TableSpec, after_id: int, cap: int) -> list[dict[str, Any]]:
        model = spec.model
        stmt = select(model).where(model.id > after_id, model.id <= cap)
        if model is Telemetry:  # the whole message is not copied: its fields are
            stmt = stmt.options(defer(Telemetry.payload))
        stmt = stmt.order_by(model.id).limit(self.settings.batch_size)
        with self.database.session() as s:
            return [spec.to_row(r) for r in s.scalars(stmt)]


def committed_high_water(table: Table) -> int:
    """The largest ``edgekit.high-water-id`` of any snapshot of ``table`` (0 when none)."""
    best = 0
    for snap in table.metadata.snapshots:
        props = snap.summary.additional_properties if snap.summary is not None else {}
        raw = props.get(HIGH_WATER)
        if raw is not None:
            try:
                best = max(best, int(raw))
            except ValueError:
                log.warning("analytics: snapshot %s has a non-integer %s=%r", snap.snapshot_id, HIGH_WATER, raw)
    return best


def sync_once(ctx: FleetContext, settings: AnalyticsSettings | None = None, *,
              syncer: IcebergSync | None = None) -> int:
    """Sync the fleet of ``ctx`` once; returns the number of rows written (telemetry + events)."""
    syncer = syncer or IcebergSync(ctx.database, settings or AnalyticsSettings(), ctx.settings.data_dir)
    return syncer.sync().total


class BackgroundSync:
    """The sync loop in a daemon thread: ``start()``, then ``stop()`` (which runs one last sync).

    ``fleet.api.create_app`` runs one for the app's lifetime (unless ``EDGEKIT_ANALYTICS_ENABLED=false``);
    elsewhere it is two lines::

        sync = BackgroundSync.for_context(ctx).start()   # at start-up
        sync.stop()                                      # at shutdown

    :meth:`status` (shown by ``/healthz``) tells when it last ran, what it wrote and its last error.
    """

    def __init__(self, syncer: IcebergSync):
        self.syncer = syncer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.rows_written = 0
        self.last_run_at: datetime | None = None
        self.last_error: str | None = None

    @classmethod
    def for_context(cls, ctx: FleetContext, settings: AnalyticsSettings | None = None) -> BackgroundSync:
        """A loop over ``ctx``'s database, configured from ``EDGEKIT_ANALYTICS_*`` unless ``settings`` given."""
        from fleet.analytics.settings import load_analytics_settings

        return cls(IcebergSync(ctx.database, settings or load_analytics_settings(), ctx.settings.data_dir))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> BackgroundSync:
        if not self.syncer.settings.enabled:
            log.info("analytics sync disabled (EDGEKIT_ANALYTICS_ENABLED=false)")
            return self
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fleet-analytics-sync", daemon=True)
            self._thread.start()
        return self

    def run_once(self, *, wait: bool = False) -> SyncResult | None:
        """One sync; a failure is recorded in :meth:`status` and logged, never raised."""
        self.runs += 1
        self.last_run_at = datetime.now(timezone.utc)
        try:
            result = self.syncer.sync(wait=wait)
        except (FleetError, ConfigError, SQLAlchemyError, OSError) as exc:
            self.last_error = str(exc)
            log.error("analytics sync failed (will retry in %.0fs): %s", self.syncer.settings.interval_s, exc)
            return None
        except Exception as exc:  # a long-running loop must survive anything a third-party library raises
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("analytics sync failed unexpectedly (will retry)")
            return None
        self.last_error = None
        self.rows_written += result.total
        if result.total:
            log.info("analytics: appended %s", result.rows)
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()  # the first run only observes where a settle time applies; the next syncs
            self._stop.wait(self.syncer.settings.interval_s)

    def stop(self, timeout: float = 60.0, *, final_sync: bool = True) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None
        if final_sync:  # on failure the watermark makes the next start pick the rows up
            self.run_once(wait=True)

    def status(self) -> dict[str, Any]:
        return {"enabled": self.syncer.settings.enabled, "running": self.running, "runs": self.runs,
                "rows_written": self.rows_written,
                "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
                "last_error": self.last_error, "interval_s": self.syncer.settings.interval_s}


def run_sync_loop(syncer: IcebergSync, stop: threading.Event) -> None:
    """Sync every ``interval_s`` until ``stop`` is set; a failed run is logged and retried, never fatal."""
    loop = BackgroundSync(syncer)
    while not stop.is_set():
        loop.run_once()
        stop.wait(syncer.settings.interval_s)
