"""A bare paho subscriber that records every device's seqs: the loss counter of benchmarks and chaos tests.

It subscribes (QoS 1, persistent session so nothing is dropped while it reconnects) to every device's
``telemetry`` and ``events`` and keeps the latest ``status`` and ``reported`` per device. Payloads are
validated with :mod:`edgekit.wire`; an invalid one is counted, never fatal. :meth:`WireCollector.missing`
answers the question the tests ask: which seqs that a device allocated never arrived?
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.errors import EdgekitError, WireError
from edgekit.wire import Event, Reported, Status, Telemetry, decode, parse_topic, subscription

__all__ = ["WireCollector"]


class WireCollector:
    """Counts what reached the broker's subscribers, per device and seq."""

    def __init__(self, host: str, port: int, *, client_id: str | None = None, keep_payloads: bool = False):
        self.host, self.port = host, port
        self.keep_payloads = keep_payloads
        self.seqs: dict[str, set[int]] = defaultdict(set)
        self.received = 0
        self.duplicates = 0
        self.replayed = 0
        self.invalid = 0
        self.status: dict[str, Status] = {}
        self.reported: dict[str, Reported] = {}
        self.events: dict[str, list[Event]] = defaultdict(list)
        self.telemetry: dict[str, list[Telemetry]] = defaultdict(list)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # A persistent session: while this subscriber reconnects the broker queues its QoS 1 messages.
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)

    def start(self, timeout: float = 10.0) -> WireCollector:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise EdgekitError(f"collector cannot reach the broker at {self.host}:{self.port}: {exc}") from exc
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise EdgekitError("collector: the broker did not acknowledge the subscriptions")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> WireCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(subscription(k), 1) for k in ("telemetry", "events", "status", "reported")])

    def _on_message(self, client, userdata, msg) -> None:
        try:
            device, kind = parse_topic(msg.topic)
            if not msg.payload:
                return  # a cleared retained message
            payload = decode(kind, msg.payload)
        except WireError:
            with self._lock:
                self.invalid += 1
            return
        with self._lock:
            if kind in ("telemetry", "events"):
                self.received += 1
                seqs = self.seqs[device]
                if payload.seq in seqs:  # type: ignore[union-attr]
                    self.duplicates += 1
                seqs.add(payload.seq)  # type: ignore[union-attr]
                self.replayed += bool(payload.replayed)  # type: ignore[union-attr]
                if kind == "events":
                    self.events[device].append(payload)  # type: ignore[arg-type]
                elif self.keep_payloads:
                    self.telemetry[device].append(payload)  # type: ignore[arg-type]
            elif kind == "status":
                self.status[device] = payload  # type: ignore[assignment]
            elif kind == "reported":
                self.reported[device] = payload  # type: ignore[assignment]

    # -- questions -----------------------------------------------------------------------------------
    def missing(self, last_seq: dict[str, int], exclude: dict[str, Iterable[int]] | None = None) -> dict[str, list[int]]:
        """Per device, the seqs in ``1..last_seq`` that never arrived, minus ``exclude`` (e.g. seqs a device
        still holds in its spool, or ones it counted as evicted)."""
        out: dict[str, list[int]] = {}
        with self._lock:
            for device, last in last_seq.items():
                got = self.seqs.get(device, set())
                gone = set(exclude.get(device, ())) if exclude else set()
                miss = [s for s in range(1, last + 1) if s not in got and s not in gone]
                if miss:
                    out[device] = miss
        return out

    def wait_complete(self, last_seq: dict[str, int], timeout: float = 30.0,
                      exclude: dict[str, Iterable[int]] | None = None) -> dict[str, list[int]]:
        """Wait until nothing is missing (or ``timeout``); returns what is still missing."""
        end = time.monotonic() + timeout
        while True:
            miss = self.missing(last_seq, exclude)
            if not miss or time.monotonic() > end:
                return miss
            time.sleep(0.1)

    def event_kinds(self, device: str) -> list[str]:
        with self._lock:
            return [e.kind for e in sorted(self.events.get(device, []), key=lambda e: e.seq)]
