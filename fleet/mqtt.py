"""MQTT plumbing of the fleet: client construction and the publisher of retained ``desired`` state.

The rollout state machine writes desired state through the small :class:`DesiredPublisher` protocol, so
it is testable with an in-memory publisher; :class:`MqttDesiredPublisher` is the real one (QoS 1,
retained, waits for the broker's acknowledgement so the DB outbox flag is only cleared once it holds).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.errors import FleetError
from edgekit.wire import Desired, encode, topic
from fleet.settings import FleetSettings

__all__ = ["DesiredPublisher", "MqttDesiredPublisher", "connect_client", "new_client"]

log = logging.getLogger(__name__)


class DesiredPublisher(Protocol):
    """Writes (or clears, with ``None``) one device's retained desired state; raises ``FleetError`` on failure."""

    def publish(self, device_id: str, desired: Desired | None) -> None: ...


def new_client(settings: FleetSettings, role: str, *, client_id: str | None = None, v5: bool = False,
               clean_session: bool = True, manual_ack: bool = False) -> mqtt.Client:
    """A paho v2 client (MQTT 3.1.1, or 5 with ``v5``) with the configured credentials; with
    ``security: mtls`` it speaks mutual TLS with the fleet identity from ``{data_dir}/pki``.

    Without ``client_id`` the id is unique (``edgekit-fleet-{role}-xxxx``). ``clean_session`` applies to
    MQTT 3.1.1 (MQTT 5 sessions are set at connect time, see :func:`connect_client`).
    """
    if v5:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"edgekit-fleet-{role}-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    else:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgekit-fleet-{role}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
            manual_ack=manual_ack,
        )
    if settings.broker_username:
        client.username_pw_set(settings.broker_username, settings.broker_password)
    if settings.secure:
        # zero trust: present the fleet identity (CN @edgekit-fleet, the ACL's fleet rights), verify the broker
        from fleet.security.client_tls import apply_fleet_tls
        from fleet.security.pki import FleetPKI

        apply_fleet_tls(client, FleetPKI.open(settings.pki_dir))
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def connect_client(client: mqtt.Client, settings: FleetSettings, *, timeout: float = 10.0,
                   session_expiry_s: int | None = None) -> None:
    """Connect and start the network loop; waits for CONNACK. Reconnects automatically afterwards.

    ``session_expiry_s`` (MQTT 5 clients only): keep the session, and the messages the broker queues
    for it, across disconnects for that long (``clean_start=False``).
    """
    host, port = settings.broker_address
    connected = threading.Event()
    previous = client.on_connect

    def on_connect(c, userdata, flags, reason_code, properties):  # paho v2 signature
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)
        if not reason_code.is_failure:
            connected.set()

    client.on_connect = on_connect
    kwargs: dict = {}
    if session_expiry_s:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(session_expiry_s)
        props.ReceiveMaximum = 65535  # QoS 1 messages in flight to us: room for batches acked after commit
        kwargs = {"clean_start": False, "properties": props}
    try:
        client.connect(host, port, keepalive=30, **kwargs)
    except ssl.SSLError as exc:
        raise FleetError(f"TLS handshake with the MQTT broker at {host}:{port} failed: {exc}") from exc
    except OSError as exc:
        raise FleetError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from exc
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise FleetError(f"MQTT broker at {host}:{port} did not accept the connection within {timeout:.0f}s")


class MqttDesiredPublisher:
    """Publishes retained desired state (QoS 1) and waits for the broker to acknowledge it."""

    def __init__(self, settings: FleetSettings, *, ack_timeout: float = 30.0):
        self.settings = settings
        self.ack_timeout = ack_timeout
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()

    def start(self) -> MqttDesiredPublisher:
        client = new_client(self.settings, "desired")
        connect_client(client, self.settings)
        self._client = client
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def publish(self, device_id: str, desired: Desired | None) -> None:
        if self._client is None:
            raise FleetError("desired-state publisher is not started")
        payload = encode(desired) if desired is not None else b""  # empty retained message clears it
        with self._lock:
            info = self._client.publish(topic(device_id, "desired"), payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise FleetError(f"publishing desired state of {device_id} failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout=self.ack_timeout)
        except (RuntimeError, ValueError) as exc:
            raise FleetError(f"publishing desired state of {device_id} failed: {exc}") from exc
        if not info.is_published():
            raise FleetError(f"broker did not acknowledge desired state of {device_id} within {self.ack_timeout}s")

    def publish_many(self, items: list[tuple[str, Desired | None]]) -> set[str]:
        """Publish several desired states pipelined (all sent, then acknowledgements awaited).

        Returns the device ids the broker acknowledged; the others stay in the outbox for a retry.
        """
        if self._client is None:
            raise FleetError("desired-state publisher is not started")
        sent = []
        with self._lock:
            for device_id, desired in items:
                payload = encode(desired) if desired is not None else b""
                info = self._client.publish(topic(device_id, "desired"), payload, qos=1, retain=True)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    sent.append((device_id, info))
        acked: set[str] = set()
        deadline = time.monotonic() + self.ack_timeout
        for device_id, info in sent:
            try:
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                continue
            if info.is_published():
                acked.add(device_id)
        return acked

    def __enter__(self) -> MqttDesiredPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
