"""MQTT ingest: every device's ``status``, ``telemetry``, ``events`` and ``reported`` into the database.

- **Subscriptions** (QoS 1): ``telemetry`` and ``events`` through an MQTT shared subscription
  (``$share/{group}/edgekit/v1/+/telemetry``) so several fleet replicas split the load. ``status`` and
  ``reported`` are retained by devices, and brokers do not deliver retained messages to shared
  subscriptions, so every replica subscribes to those two directly (low volume; updates are idempotent).
- **Fast path**: the paho network thread only appends ``(topic, payload, time)`` to a queue; a writer
  thread validates with :func:`edgekit.wire.decode` and writes in batches (flush by size or time) with
  :func:`fleet.store.store_batch`, de-duplicating replays by ``(device, seq)``.
- **Nothing lost while the fleet is down**: the ingest is an MQTT 5 client with a stable id
  (``edgekit-fleet-ingest-{replica_id}``) and a session that outlives disconnects for
  ``ingest_session_expiry_s`` (1 h by default), so the broker queues telemetry and events for it during
  a restart. A replica removed for good should be given that long to be forgotten: brokers keep
  offering it its share of the shared subscription until its session expires.
- **Acknowledged once committed**: on that persistent session a message is PUBACKed only after its batch
  is committed (or rejected as invalid); anything received but not yet written when the process dies is
  redelivered by the broker and de-duplicated. (On MQTT 3.1.1 brokers the client acknowledges on receipt.)
- **Never fatal**: a bad topic or payload is counted (``invalid``) and logged; a database error keeps the
  batch and retries it, so nothing acknowledged is dropped while the process lives. ``stop()`` drains
  the queue before returning.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from sqlalchemy.exc import InterfaceError, OperationalError

from edgekit import wire
from edgekit.errors import FleetError, WireError
from fleet.db.base import Database
from fleet.mqtt import connect_client, new_client
from fleet.settings import FleetSettings
from fleet.store import BatchResult, Message, store_batch

__all__ = ["Ingest", "IngestStats", "decode_message", "subscriptions"]

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class IngestStats:
    """Live counters (read from any thread; each is written by one thread only)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    #: empty payloads (a cleared retained message): nothing to store
    ignored: int = 0
    batches: int = 0
    db_errors: int = 0
    last_error: str | None = None

    @property
    def pending(self) -> int:
        """Messages received but not yet written (or rejected)."""
        return self.received - self.stored - self.duplicates - self.invalid - self.ignored

    def snapshot(self) -> dict[str, int | str | None]:
        return {
            "received": self.received, "stored": self.stored, "duplicates": self.duplicates,
            "invalid": self.invalid, "ignored": self.ignored, "pending": self.pending, "batches": self.batches,
            "db_errors": self.db_errors, "last_error": self.last_error,
        }


def subscriptions(shared_group: str | None) -> list[tuple[str, int]]:
    """The ``(topic filter, qos)`` list the ingest subscribes to (see the module docstring)."""
    return [
        (wire.subscription("telemetry", shared_group=shared_group), 1),
        (wire.subscription("events", shared_group=shared_group), 1),
        (wire.subscription("status"), 1),
        (wire.subscription("reported"), 1),
    ]


def decode_message(topic: str, payload: bytes, received: float) -> Message | None:
    """Validate one MQTT message; ``None`` for an empty payload (a cleared retained message).

    Raises :class:`~edgekit.errors.WireError` for a foreign topic, a bad payload, or a payload whose
    ``device_id`` is not the topic's device (one device must not write another's data).
    """
    device_id, kind = wire.parse_topic(topic)
    if not payload:
        return None
    if kind == "desired":
        raise WireError(f"{topic}: the fleet does not ingest desired state")
    # Fast path: pydantic parses and validates the JSON in one pass (~3x faster than json.loads +
    # validate). Anything it does not accept as-is goes through wire.decode, which gives the contract's
    # exact verdict and error message.
    try:
        p = wire.MODELS[kind].model_validate_json(payload)
        if p.v != wire.WIRE_VERSION:
            raise ValueError("version")
    except ValueError:
        p = wire.decode(kind, payload)
    if p.device_id != device_id:
        raise WireError(f"{topic}: payload device_id {p.device_id!r} does not match the topic")
    return Message(kind, device_id, p, datetime.fromtimestamp(received, timezone.utc))


class Ingest:
    """Subscribe, validate, batch and store (see the module docstring). ``start()`` / ``stop()``."""

    def __init__(
        self,
        settings: FleetSettings,
        database: Database,
        *,
        stats: IngestStats | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
        on_messages: Callable[[list[Message]], None] | None = None,
    ):
        """``on_batch`` gets what each committed batch stored; ``on_messages`` the committed messages
        themselves (e.g. to react to device events). Neither hook can stop the ingest."""
        self.settings = settings
        self.database = database
        self.stats = stats or IngestStats()
        self.on_batch = on_batch
        self.on_messages = on_messages
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self._logged_invalid = 0
        self._epoch = 0
        self._subscribed = threading.Event()
        #: acknowledge messages only once they are committed (persistent MQTT 5 sessions)
        self._manual_ack = bool(settings.mqtt_v5 and settings.ingest_session_expiry_s)

    # -- MQTT side (network thread) -----------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("ingest: broker refused the connection: %s", reason_code)
            return
        self._epoch += 1  # acknowledgements of messages from an earlier connection are not sent
        client.subscribe(subscriptions(self.settings.shared_group))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if failed:
            log.error("ingest: the broker refused a subscription: %s", failed)
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        self._queue.put((message.topic, message.payload, time.time(), message.mid, message.qos, self._epoch))
        self.stats.received += 1

    def _ack(self, raw: list[tuple]) -> None:
        """PUBACK what was just committed (or rejected); the broker redelivers anything not acked."""
        client = self._client
        if not self._manual_ack or client is None:
            return
        for _topic, _payload, _received, mid, qos, epoch in raw:
            if qos and epoch == self._epoch:
                client.ack(mid, qos)

    # -- writer thread ------------------------------------------------------------------------
    def _invalid(self, topic: str, exc: Exception) -> None:
        self.stats.invalid += 1
        self.stats.last_error = f"{topic}: {exc}"
        if self._logged_invalid < 20 or self.stats.invalid % 1000 == 0:
            log.warning("ingest: rejected message on %s: %s (invalid so far: %d)", topic, exc, self.stats.invalid)
            self._logged_invalid += 1

    def _write(self, batch: list[Message]) -> None:
        """Write a batch; retry while the database is unreachable, isolate a message it refuses."""
        delay = 0.5
        while True:
            try:
                with self.database.session() as s:
                    res = store_batch(s, batch)
                break
            except (OperationalError, InterfaceError) as exc:  # unreachable / locked: keep the batch, retry
                self.stats.db_errors += 1
                self.stats.last_error = f"database: {exc}"
                log.error("ingest: writing %d messages failed, retrying in %.1fs: %s", len(batch), delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception as exc:  # noqa: BLE001 - the database refuses some row: find it, keep the rest
                self.stats.db_errors += 1
                if len(batch) == 1:
                    self._invalid(f"{wire.topic(batch[0].device_id, batch[0].kind)}", exc)  # type: ignore[arg-type]
                    return
                log.warning("ingest: the database refused a batch (%s); writing its %d messages one by one",
                            exc, len(batch))
                for m in batch:
                    self._write([m])
                return
        self.stats.batches += 1
        self.stats.duplicates += res.duplicates
        self.stats.stored += len(batch) - res.duplicates
        if self.on_batch is not None:
            try:
                self.on_batch(res)
            except Exception:  # noqa: BLE001 - a hook must not stop the ingest
                log.exception("ingest: batch hook failed")
        if self.on_messages is not None:
            try:
                self.on_messages(batch)
            except Exception:  # noqa: BLE001 - a hook must not stop the ingest
                log.exception("ingest: message hook failed")

    def _run(self) -> None:
        size, flush_s = self.settings.ingest_batch_size, self.settings.ingest_flush_s
        stopping = False
        while not stopping:
            try:
                item = self._queue.get(timeout=flush_s)
            except queue.Empty:
                continue
            raw = []
            deadline = time.monotonic() + flush_s
            while True:
                if item is _STOP:
                    stopping = True
                    break
                raw.append(item)
                if len(raw) >= size:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            batch = []
            for topic, payload, received, *_ in raw:
                try:
                    msg = decode_message(topic, payload, received)
                except WireError as exc:
                    self._invalid(topic, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - no payload may stop the writer thread
                    self._invalid(topic, WireError(f"unreadable payload: {type(exc).__name__}: {exc}"))
                    continue
                if msg is None:
                    self.stats.ignored += 1
                    continue
                batch.append(msg)
            if batch:
                self._write(batch)
            self._ack(raw)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Ingest:
        if self._writer is not None:
            raise FleetError("ingest already started")
        self._writer = threading.Thread(target=self._run, name="fleet-ingest-writer", daemon=True)
        self._writer.start()
        expiry, v5 = self.settings.ingest_session_expiry_s, self.settings.mqtt_v5
        client = new_client(self.settings, "ingest", v5=v5, clean_session=not expiry, manual_ack=self._manual_ack,
                            client_id=f"edgekit-fleet-ingest-{self.settings.replica_id}" if expiry else None)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client  # before connecting: the writer acknowledges through it from the first batch
        try:
            connect_client(client, self.settings, session_expiry_s=(expiry or None) if v5 else None)
            # return only once the broker confirmed the subscriptions: from then on nothing is missed
            if not self._subscribed.wait(10):
                raise FleetError("the MQTT broker did not confirm the ingest's subscriptions within 10s")
        except FleetError:
            client.loop_stop()
            self._client = None
            self._queue.put(_STOP)
            self._writer.join()
            self._writer = None
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop receiving, write everything already received, then return."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join(timeout)
            self._writer = None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every received message is written or rejected (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats.pending <= 0:
                return True
            time.sleep(0.02)
        return False

    def __enter__(self) -> Ingest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
