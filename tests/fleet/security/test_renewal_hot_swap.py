"""Certificate rotation without downtime, against the real broker.

The device keeps one ``ssl.SSLContext`` (handed to paho with ``tls_set_context``); when the renewed
files arrive (``provision --renew`` rewrites ``device.crt``/``device.key`` atomically) it calls
``load_cert_chain`` on that same context again. The live session is untouched, and every later
handshake presents the new certificate, so the device rides through the old certificate's expiry.
This is the recipe the agent can adopt; the test proves it works with mosquitto and paho.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from zerotrust_helpers import Identity, connect, save_identity

from fleet.security.files import write_private, write_public

pytestmark = pytest.mark.integration


def _publish_acked(client: mqtt.Client, payload: bytes) -> None:
    info = client.publish("edgekit/v1/cam-h/telemetry", payload, qos=1)
    info.wait_for_publish(5)
    assert info.is_published(), f"no PUBACK for {payload!r}"


def test_renewed_certificate_is_swapped_in_live_and_outlives_the_old_one(secure_broker, pki, tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    # an old certificate about to expire (valid for ~3 more seconds)
    old = pki.issue_device("cam-h", valid_from=now - dt.timedelta(seconds=1), valid_for=dt.timedelta(seconds=4))
    folder = tmp_path / "device"
    cert, key = folder / "device.crt", folder / "device.key"
    write_public(cert, old.cert_pem)
    write_private(key, old.key_pem)
    old_copy = save_identity(old, tmp_path / "old-copy", pki.ca_cert_path)

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert_path))
    ctx.load_cert_chain(str(cert), str(key))
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="cam-h")
    client.tls_set_context(ctx)
    connects: list[int] = []
    connected = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            connects.append(1)
            connected.set()

    client.on_connect = on_connect
    client.connect("localhost", secure_broker.port)
    client.loop_start()
    try:
        assert connected.wait(5)
        # renewal delivered into the device's folder, then applied to the live context
        new = pki.issue_device("cam-h", renew=True)
        write_public(cert, new.cert_pem)
        write_private(key, new.key_pem)
        ctx.load_cert_chain(str(cert), str(key))
        _publish_acked(client, b"during-swap")
        assert len(connects) == 1  # no reconnect was needed: no downtime

        # the old certificate expires
        time.sleep(max(0.0, (old.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.2)
        assert isinstance(connect(secure_broker, old_copy, "cam-h-old"), str), "expired cert still accepted"
        # a fresh handshake on the same context presents the renewed certificate and is accepted
        connected.clear()
        client.reconnect()
        assert connected.wait(5), "reconnect after the old certificate expired failed"
        _publish_acked(client, b"after-expiry")  # only the renewed certificate can have got it here
    finally:
        client.disconnect()
        client.loop_stop()
    # and the renewed files alone (e.g. after an agent restart) connect too
    s = connect(secure_broker, Identity(cert=cert, key=key, ca=pki.ca_cert_path), "cam-h")
    assert not isinstance(s, str), s
    s.close()
