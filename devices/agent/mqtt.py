"""The agent's MQTT link (paho-mqtt v2): birth/will on ``status``, spooled telemetry and events,
retained ``reported``, subscription to the retained ``desired``.

Telemetry and events never go straight to the socket: they are written to the :class:`Spool` and a
pump thread publishes them oldest-first at QoS 1, deleting each row only when its PUBACK arrives. After
a reconnect the pump first lets paho re-send what was in flight, so the order on the wire is the spool
order. paho reconnects by itself with exponential backoff (``reconnect_delay_set``).

Over ``mqtts://`` the link keeps one ``ssl.SSLContext`` (paho ``tls_set_context``). When the client
certificate or key file changes on disk (a renewal from ``edgekit fleet provision --renew`` rewrites
both atomically), :meth:`MqttLink.reload_tls` loads the new pair into that same context — checked every
few seconds by the pump thread and right after every disconnect — so the next (re)connect presents the
renewed certificate without an agent restart, and the live session is never interrupted for it.
The renewal itself arrives over this link too (``csr`` out, ``cert`` in; see ``certs.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgekit.errors import AgentError, EdgekitError
from edgekit.wire import Event, Reported, Status, Telemetry, encode, topic

from .config import MqttConfig
from .spool import Spool

__all__ = ["MqttLink", "TlsIdentity"]

log = logging.getLogger("edgekit.agent.mqtt")

#: how often (seconds) the pump thread looks at the certificate files for a renewal
TLS_CHECK_INTERVAL_S = 2.0


def _file_sig(path) -> tuple[int, int, int, int] | None:
    """What identifies one version of a file: (inode, device, size, mtime ns); None when unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class TlsIdentity:
    """The agent's TLS client context, with the certificate chain reloaded in place when its files change.

    A renewal is first loaded into a scratch context: a certificate whose key has not arrived yet (or a
    broken file) is refused with a warning and the context keeps presenting the previous, working pair;
    the next check tries again.
    """

    def __init__(self, ca_file, cert_file, key_file):
        self.cert_file, self.key_file = cert_file, key_file
        try:
            self.context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
            )
            if cert_file:
                self.context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise AgentError(f"MQTT TLS setup failed: {exc}") from exc
        self._sig = self._signature()
        self.reloads = 0
        self._lock = threading.Lock()

    def _signature(self) -> tuple:
        return (_file_sig(self.cert_file), _file_sig(self.key_file)) if self.cert_file else ()

    def reload_if_changed(self) -> bool:
        """Load a changed certificate/key pair into the live context; True when a new pair was loaded."""
        if not self.cert_file:
            return False
        with self._lock:
            sig = self._signature()
            if sig == self._sig or None in sig:
                return False
            cert, key = str(self.cert_file), str(self.key_file) if self.key_file else None
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)  # check the pair first
                self.context.load_cert_chain(cert, key)
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.warning("renewed client certificate %s not loaded (keeping the current one): %s", cert, exc)
                return False
            self._sig = sig
            self.reloads += 1
        log.info("client certificate %s reloaded; used from the next connection on", cert)
        return True


def _mark_replayed(payload: bytes) -> bytes:
    data = json.loads(payload)
    data["replayed"] = True
    return json.dumps(data, separators=(",", ":")).encode()


class MqttLink:
    """One device's connection to the broker."""

    def __init__(
        self,
        cfg: MqttConfig,
        spool: Spool,
        *,
        birth: Callable[[], Status],
        on_desired: Callable[[bytes], None],
        on_cert: Callable[[bytes], None] | None = None,
        on_connected: Callable[[], None] | None = None,
    ):
        """``on_cert`` (set when the agent renews its certificate over MQTT) gets this device's ``cert``
        messages; ``on_connected`` runs after every successful (re)connect (network thread: keep it short)."""
        if not cfg.url or not cfg.device_id:
            raise AgentError("MQTT needs mqtt.url and mqtt.device_id")
        self.cfg = cfg
        self.device_id = cfg.device_id
        self.spool = spool
        self._birth = birth
        self._on_desired = on_desired
        self._on_cert = on_cert
        self._on_connected = on_connected
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid → spool row id
        # PUBACKs that arrived before the pump recorded the mid (mid → when); see _pump_once
        self._early_acks: dict[int, float] = {}
        self._last_sent = 0
        self._resync = False
        self._reported: Reported | None = None
        # mids of 'reported' publishes not yet acknowledged; after a reconnect paho re-sends those (older)
        # ones itself, so the latest is re-published only once they are through (else it goes stale)
        self._reported_inflight: set[int] = set()
        self._reported_due = False
        self._reported_due_since = 0.0
        self._pump: threading.Thread | None = None
        self.connects = 0
        url = urlsplit(cfg.url)
        self._host, self._port = url.hostname or "localhost", url.port or (8883 if url.scheme == "mqtts" else 1883)
        self._tls = url.scheme == "mqtts"
        self.tls: TlsIdentity | None = (
            TlsIdentity(cfg.ca_file, cfg.client_cert, cfg.client_key) if self._tls else None
        )
        self._tls_checked = time.monotonic()
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id, clean_session=True)
        c.enable_logger(log)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self.cfg.password)
        if self.tls is not None:
            try:
                c.tls_set_context(self.tls.context)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise AgentError(f"MQTT TLS setup failed: {exc}") from exc
        will = Status(device_id=self.device_id, state="offline")
        c.will_set(topic(self.device_id, "status"), encode(will), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=max(1, round(self.cfg.reconnect_min_s)),
                              max_delay=max(1, round(self.cfg.reconnect_max_s)))
        c.max_inflight_messages_set(self.cfg.max_inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> MqttLink:
        try:
            self.client.connect_async(self._host, self._port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot connect to MQTT broker {self.cfg.url}: {exc}") from exc
        self.client.loop_start()
        self._pump = threading.Thread(target=self._pump_loop, name="edgekit-mqtt-pump", daemon=True)
        self._pump.start()
        return self

    def stop(self, *, timeout: float = 3.0) -> None:
        """Flush what can be flushed, publish a clean ``offline`` status, disconnect."""
        if self.connected.is_set():
            self._drain(timeout)
            info = self.client.publish(topic(self.device_id, "status"),
                                       encode(Status(device_id=self.device_id, state="offline")), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=timeout)
        self._stop.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.connected.is_set() and (len(self.spool) or self._inflight):
            self._wake.set()
            time.sleep(0.02)

    # -- publishing ------------------------------------------------------------------------------
    def emit_telemetry(self, build: Callable[[int], Telemetry]) -> int:
        return self._emit("telemetry", build)

    def emit_event(self, build: Callable[[int], Event]) -> int:
        return self._emit("events", build)

    def _emit(self, kind: str, build: Callable[[int], Telemetry | Event]) -> int:
        _, seq = self.spool.enqueue(
            topic(self.device_id, kind), lambda s: encode(build(s)), deferred=not self.connected.is_set()
        )
        self._wake.set()
        return seq

    def publish_reported(self, rep: Reported) -> None:
        """Retained; the latest one is re-published on every (re)connect."""
        self._reported = rep
        if self.connected.is_set():
            self._send_reported(rep)

    def _send_reported(self, rep: Reported) -> None:
        t0 = time.monotonic()
        info = self.client.publish(topic(self.device_id, "reported"), encode(rep), qos=1, retain=True)
        with self._lock:
            if self._early_acks.pop(info.mid, -1.0) < t0:  # see _pump_once: an early PUBACK is its own
                self._reported_inflight.add(info.mid)

    def _flush_reported(self) -> None:
        """After a reconnect: re-publish the latest 'reported' once paho's re-sends of older ones are acked."""
        with self._lock:
            if not self._reported_due or not self.connected.is_set():
                return
            # wait for paho's re-sends of older ones, but not forever (a lost PUBACK must not pin it)
            if self._reported_inflight and time.monotonic() - self._reported_due_since < 30:
                return
            self._reported_due = False
        if self._reported is not None:
            self._send_reported(self._reported)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def reload_tls(self) -> bool:
        """Use a renewed client certificate from the next connection on (True when one was loaded)."""
        self._tls_checked = time.monotonic()
        return self.tls.reload_if_changed() if self.tls is not None else False

    def _pump_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                if self.tls is not None and time.monotonic() - self._tls_checked >= TLS_CHECK_INTERVAL_S:
                    self.reload_tls()
                self._pump_once()
            except EdgekitError as exc:
                log.warning("spool pump: %s", exc)
            except Exception:  # noqa: BLE001 - the pump must survive anything and try again
                log.exception("spool pump failed; retrying")

    def _pump_once(self) -> None:
        self._flush_reported()
        while self.connected.is_set() and not self._stop.is_set():
            with self._lock:
                if self._resync:
                    if self._inflight:  # paho is re-sending these; keep the order
                        return
                    self._resync = False
                room = self.cfg.max_inflight - len(self._inflight)
            if room <= 0:
                return
            rows = self.spool.pending(self._last_sent, limit=room)
            if not rows:
                return
            for row in rows:
                payload = _mark_replayed(row.payload) if row.deferred else row.payload
                t0 = time.monotonic()
                info = self.client.publish(row.topic, payload, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    return  # e.g. queue full: try again on the next wake-up
                with self._lock:
                    self._last_sent = row.id
                    # A PUBACK for this mid seen after this publish began can only be for it (mids are
                    # unique among messages in flight); an older one belonged to another message.
                    if self._early_acks.pop(info.mid, -1.0) >= t0:
                        ack_now = True
                    else:
                        self._inflight[info.mid] = row.id
                        ack_now = False
                if ack_now:
                    self.spool.ack(row.id)

    # -- paho callbacks (network thread: never raise, never block long) ---------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            return
        self.connects += 1
        try:
            client.publish(topic(self.device_id, "status"), encode(self._birth()), qos=1, retain=True)
        except Exception:  # noqa: BLE001
            log.exception("birth message failed")
        client.subscribe(topic(self.device_id, "desired"), qos=1)
        if self._on_cert is not None:
            client.subscribe(topic(self.device_id, "cert"), qos=1)
        with self._lock:
            self._resync = bool(self._inflight)
            self._reported_due = True  # sent by the pump thread (_flush_reported), after paho's re-sends
            self._reported_due_since = time.monotonic()
        self.connected.set()
        self._wake.set()
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:  # noqa: BLE001
                log.exception("on-connect hook failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        try:
            self.reload_tls()  # e.g. cut off because the old certificate expired: reconnect with the new one
        except Exception:  # noqa: BLE001
            log.exception("client certificate reload failed")
        try:
            self.spool.defer_all()
        except Exception:  # noqa: BLE001
            log.exception("spool: cannot mark messages deferred")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            row = self._inflight.pop(mid, None)
            was_reported = mid in self._reported_inflight
            self._reported_inflight.discard(mid)
            if row is None and not was_reported:
                now = time.monotonic()
                self._early_acks[mid] = now
                if len(self._early_acks) > 256:
                    self._early_acks = {m: t for m, t in self._early_acks.items() if now - t < 30}
        if row is not None:
            try:
                self.spool.ack(row)
            except Exception:  # noqa: BLE001
                log.exception("spool ack failed")
        self._wake.set()

    def publish_csr(self, payload: bytes) -> bool:
        """Send a certificate renewal request (QoS 1, not spooled: re-sent until answered); False when offline."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic(self.device_id, "csr"), payload, qos=1)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _on_message(self, client, userdata, msg) -> None:
        cert = self._on_cert is not None and msg.topic.endswith("/cert")
        try:
            (self._on_cert if cert else self._on_desired)(msg.payload)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a bad message must never kill the network thread
            log.exception("%s handler failed", "certificate" if cert else "desired-state")
