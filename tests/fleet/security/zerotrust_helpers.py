"""Helpers of the zero-trust tests (a uniquely named module, importable from every test file here):
mosquitto started with the generated secure config, and a small mTLS MQTT v5 client that records what
it receives."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from servers import MOSQUITTO, free_port

from fleet.security.pki import FleetPKI, IssuedIdentity
from fleet.security.secure_broker import SecureBroker

__all__ = ["MOSQUITTO", "Identity", "SecureMosquitto", "Session", "connect", "save_identity"]


class SecureMosquitto(SecureBroker):
    """The production :class:`SecureBroker` on free loopback ports (fleet listener optional)."""

    def __init__(self, pki: FleetPKI, workdir: Path, *, fleet_listener: bool = False, persistence: bool = False):
        super().__init__(
            pki, workdir, port=free_port(), bind="127.0.0.1",
            fleet_port=free_port() if fleet_listener else None, persistence=persistence, binary=MOSQUITTO,
        )
        self.host = "127.0.0.1"


@dataclass
class Identity:
    """Key and certificate files of one MQTT client, plus the CA it trusts."""

    cert: Path | None
    key: Path | None
    ca: Path


def save_identity(issued: IssuedIdentity, folder: Path, ca: Path) -> Identity:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{issued.serial}.crt", folder / f"{issued.serial}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return Identity(cert=cert, key=key, ca=ca)


@dataclass
class Session:
    """A connected paho client (MQTT v5) that records what it receives."""

    client: mqtt.Client
    received: list[tuple[str, bytes]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def subscribe(self, topic: str, timeout: float = 5.0) -> list:
        """Subscribe and return the SUBACK reason codes."""
        done = threading.Event()
        codes: list = []

        def on_subscribe(c, userdata, mid, reason_codes, properties):
            codes.extend(reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        assert done.wait(timeout), f"no SUBACK for {topic}"
        return codes

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 5.0) -> int:
        """Publish QoS 1 and return the PUBACK reason code value (v5: 135 = not authorised)."""
        done = threading.Event()
        rc: list[int] = []

        def on_publish(c, userdata, mid, reason_code, properties):
            rc.append(reason_code.value)
            done.set()

        self.client.on_publish = on_publish
        self.client.publish(topic, payload, qos=1, retain=retain)
        assert done.wait(timeout), f"no PUBACK for {topic}"
        return rc[0]

    def wait_for(self, predicate, timeout: float = 4.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.received)):
                    return True
            time.sleep(0.02)
        return False

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(broker: SecureMosquitto, ident: Identity, client_id: str, timeout: float = 5.0) -> Session | str:
    """Connect with mTLS; return a :class:`Session`, or a string saying why the connection failed."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set(
        ca_certs=str(ident.ca),
        certfile=str(ident.cert) if ident.cert else None,
        keyfile=str(ident.key) if ident.key else None,
    )
    session = Session(client=c)
    connected, settled = threading.Event(), threading.Event()
    outcome: list[str] = []

    def on_connect(cl, userdata, flags, reason_code, properties):
        outcome.append(str(reason_code))
        if not reason_code.is_failure:
            connected.set()
        settled.set()

    def on_disconnect(cl, userdata, flags, reason_code, properties):
        outcome.append(f"disconnected: {reason_code}")
        session.disconnected.set()
        settled.set()

    def on_message(cl, userdata, msg):
        with session.lock:
            session.received.append((msg.topic, msg.payload))

    c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
    try:
        c.connect(broker.host, broker.port, keepalive=10)
    except OSError as exc:  # ssl.SSLError is an OSError: the handshake itself was refused
        return f"refused during TLS handshake: {exc}"
    c.loop_start()
    settled.wait(timeout)
    if not connected.is_set() or session.disconnected.is_set():
        c.loop_stop()
        c.disconnect()
        return f"not connected: {outcome or 'no CONNACK'}"
    # With TLS 1.3 the server checks the client certificate after the client's handshake finished;
    # a refusal then shows up as an immediate disconnect, so give it a moment to arrive.
    if session.disconnected.wait(0.2):
        c.loop_stop()
        return f"dropped after connect: {outcome}"
    return session
