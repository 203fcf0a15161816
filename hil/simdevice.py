"""One simulated device: a paho client on the shared loop, a bounded spool, telemetry and OTA.

It speaks exactly what the real agent speaks (:mod:`edgekit.wire`): a retained ``online`` birth and an
``offline`` last will on ``status``; ``telemetry`` and ``events`` at QoS 1 sharing one per-device
``seq`` counter (from 1), spooled until the broker's PUBACK and re-sent after a reconnect with
``replayed: true``; the latest ``reported`` retained and re-published on every connect; and a QoS 1
subscription to its retained ``desired``. The spool is in memory and bounded: when it is full the
oldest messages are evicted and counted in ``spool_evicted``, as the agent does.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import deque
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgekit import __version__
from edgekit.wire import Event, LatencyStats, ModelRef, Reported, Status, Telemetry, encode, topic
from hil.mqttio import LoopedClients
from hil.simota import BundleSource, SimOta, Slot
from hil.simscript import SimScript

__all__ = ["SimDevice"]


class SimDevice:
    """A lightweight stand-in for one device agent (all methods run on the simulator's loop thread)."""

    def __init__(self, device_id: str, index: int, *, script: SimScript, loops: LoopedClients,
                 interval_s: float, max_spool: int, max_inflight: int, profile: str | None,
                 source: BundleSource | None, allowed_url_prefixes: tuple[str, ...], seed: int,
                 track_acks: bool = False):
        self.device_id = device_id
        self.index = index
        self.script = script
        self.loops = loops
        self.interval_s = interval_s
        self.max_spool = max_spool
        self.max_inflight = max_inflight
        self.profile = profile
        self.rng = np.random.default_rng(seed + index)
        self.connected = False
        self.connects = 0
        self.seq = 0
        self.telemetry_sent = 0
        self.events_sent = 0
        self.acked = 0
        self.evicted = 0
        self._spool: deque[tuple[str, Telemetry | Event, bool]] = deque()  # (topic, payload, deferred)
        self._inflight: dict[int, int] = {}  # mid → seq
        #: seq → wall-clock time of its PUBACK (only with ``track_acks``)
        self.ack_times: dict[int, float] | None = {} if track_acks else None
        self._reported: Reported | None = None
        self.ota = SimOta(device_id=device_id, script=script, event=self.emit_event, report=self.publish_reported,
                          source=source, allowed_url_prefixes=allowed_url_prefixes)
        if script.initial_model is not None:
            ref = script.initial_model
            sha = hashlib.sha256(f"{ref.name}@{ref.version}".encode()).hexdigest()
            self.ota.active = Slot(ref=ref, sha256=sha, name="a")
            self.ota.state = "installed"
        self._topics = {k: topic(device_id, k) for k in ("status", "telemetry", "events", "desired", "reported")}
        self.client = self._make_client()
        loops.add(self.client)

    def _make_client(self) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id, clean_session=True)
        c.will_set(self._topics["status"], encode(Status(device_id=self.device_id, state="offline")), qos=1,
                   retain=True)
        c.max_inflight_messages_set(self.max_inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    # -- state -------------------------------------------------------------------------------------
    @property
    def model(self) -> ModelRef | None:
        return self.ota.active.ref if self.ota.active else None

    @property
    def unacked(self) -> int:
        return len(self._spool) + len(self._inflight)

    def birth(self) -> Status:
        return Status(device_id=self.device_id, state="online", agent_version=f"{__version__}+sim",
                      profile=self.profile, model=self.model, tags=list(self.script.tags))

    # -- paho callbacks (loop thread) ----------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connects += 1
        self.connected = True
        client.publish(self._topics["status"], encode(self.birth()), qos=1, retain=True)
        client.subscribe(self._topics["desired"], qos=1)
        if self._reported is None:
            self._reported = self.ota.reported()
        # paho re-sends what was in flight (possibly an older ``reported``) right after this callback
        # returns; publishing the latest one afterwards keeps the retained state current.
        asyncio.get_running_loop().call_soon(self._republish_reported)
        self.pump()

    def _republish_reported(self) -> None:
        if self.connected and self._reported is not None:
            self.client.publish(self._topics["reported"], encode(self._reported), qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        # Messages paho holds in flight are re-sent by paho after the reconnect; the rest are replays.
        self._spool = deque((t, p, True) for t, p, _ in self._spool)
        self.loops.mark_down(client)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self.acked += 1
            if self.ack_times is not None:
                self.ack_times[seq] = time.time()
        self.pump()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == self._topics["desired"]:
            self.ota.handle_desired(msg.payload)

    # -- publishing --------------------------------------------------------------------------------
    def _enqueue(self, kind: str, payload: Telemetry | Event) -> None:
        self._spool.append((self._topics[kind], payload, not self.connected))
        while len(self._spool) > self.max_spool:
            self._spool.popleft()
            self.evicted += 1
        self.pump()

    def pump(self) -> None:
        """Hand spooled messages to paho, oldest first, while connected and under ``max_inflight``."""
        while self.connected and self._spool and len(self._inflight) < self.max_inflight:
            t, payload, deferred = self._spool[0]
            if deferred:
                payload = payload.model_copy(update={"replayed": True})
            info = self.client.publish(t, encode(payload), qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                return  # paho refused it (queue full): keep it spooled, try on the next PUBACK
            # NO_CONN: paho keeps a QoS 1 message and sends it after the reconnect, so it is handed over.
            self._spool.popleft()
            self._inflight[info.mid] = payload.seq

    def emit_telemetry(self) -> int:
        self.seq += 1
        self.telemetry_sent += 1
        self._enqueue("telemetry", self._telemetry(self.seq))
        return self.seq

    def emit_event(self, kind: str, message: str, *, level: str = "info", rollout_id: str | None = None,
                   data: dict[str, Any] | None = None) -> int:
        self.seq += 1
        self.events_sent += 1
        self._enqueue("events", Event(device_id=self.device_id, seq=self.seq, kind=kind, level=level,  # type: ignore[arg-type]
                                      message=message, rollout_id=rollout_id, data=data or {}))
        return self.seq

    def publish_reported(self, rep: Reported) -> None:
        self._reported = rep
        if self.connected:
            self.client.publish(self._topics["reported"], encode(rep), qos=1, retain=True)

    def publish_offline(self) -> None:
        if self.connected:
            self.client.publish(self._topics["status"], encode(Status(device_id=self.device_id, state="offline")),
                                qos=1, retain=True)

    def _telemetry(self, seq: int) -> Telemetry:
        beh = self.script.behaviour(self.device_id, self.model)
        n = int(self.rng.poisson(beh.requests_per_interval)) if beh.requests_per_interval else 0
        if self.model is None:
            n = 0  # nothing to serve without a model
        errors = int(self.rng.binomial(n, beh.error_rate)) if n else 0
        latency = LatencyStats()
        if n - errors > 0:
            samples = self.rng.lognormal(math.log(max(beh.latency_ms, 1e-6)), beh.latency_jitter, size=n - errors)
            p50, p95, p99 = np.percentile(samples, [50, 95, 99])
            latency = LatencyStats(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), mean_ms=float(samples.mean()))
        return Telemetry(device_id=self.device_id, seq=seq, interval_s=self.interval_s, model=self.model, requests=n,
                         errors=errors, latency=latency, queue_depth=len(self._spool), spool_evicted=self.evicted)
