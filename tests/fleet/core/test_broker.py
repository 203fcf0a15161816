"""The fleet's own broker: mosquitto as a child process, or the amqtt fallback (with a warning)."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.errors import FleetError
from fleet.broker import EmbeddedBroker, find_mosquitto
from fleet.settings import load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from servers import free_port  # noqa: E402

pytestmark = pytest.mark.integration


def roundtrip(port: int) -> bytes:
    got, done = [], threading.Event()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)

    def on_message(c, u, m):
        got.append(m.payload)
        done.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish("edgekit/v1/x/desired", b"hello", qos=1, retain=True).wait_for_publish(5)
    c.subscribe("edgekit/v1/+/desired", qos=1)  # the retained message arrives on subscribe
    done.wait(5)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else b""


@pytest.mark.parametrize("prefer_mosquitto", [True, False], ids=["mosquitto", "amqtt"])
def test_embedded_broker_serves_and_stops(tmp_path, prefer_mosquitto, caplog):
    if prefer_mosquitto and find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    pytest.importorskip("amqtt", reason="amqtt not installed (pip install 'edgekit[fleet]')")
    s = load_settings(data_dir=tmp_path, broker_port=free_port(), broker_host="127.0.0.1")
    caplog.set_level(logging.WARNING, logger="fleet.broker")
    with EmbeddedBroker(s, prefer_mosquitto=prefer_mosquitto) as broker:
        assert broker.kind == ("mosquitto" if prefer_mosquitto else "amqtt")
        assert roundtrip(s.broker_port) == b"hello"
        if not prefer_mosquitto:
            assert "FOR TRIALS ONLY" in caplog.text
    with pytest.raises(OSError):
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", s.broker_port)


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = load_settings(data_dir=tmp_path, broker_port=port, broker_host="127.0.0.1")
        with pytest.raises(FleetError, match="already in use"):
            EmbeddedBroker(s).start()


def test_mosquitto_keeps_retained_desired_state_across_restarts(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    s = load_settings(data_dir=tmp_path, broker_port=free_port(), broker_host="127.0.0.1")
    with EmbeddedBroker(s):
        assert roundtrip(s.broker_port) == b"hello"
    assert (tmp_path / "broker" / "mosquitto.db").exists(), "persistence written to the data dir"
    got, done = [], threading.Event()
    with EmbeddedBroker(s):
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        c.on_message = lambda c, u, m: (got.append(m.payload), done.set())
        c.connect("127.0.0.1", s.broker_port)
        c.loop_start()
        c.subscribe("edgekit/v1/+/desired", qos=1)
        done.wait(5)
        c.loop_stop()
        c.disconnect()
    assert got == [b"hello"], "the retained desired state survived the broker's restart"


def test_fleet_without_mosquitto_runs_on_the_trial_broker(tmp_path, monkeypatch, caplog):
    """No mosquitto binary: the fleet starts amqtt (MQTT 3.1.1) and its ingest still works end to end."""
    pytest.importorskip("amqtt", reason="amqtt not installed (pip install 'edgekit[fleet]')")
    import time

    from edgekit import wire
    from fleet.db.models import Device
    from fleet.service import FleetService

    monkeypatch.setattr("fleet.broker.find_mosquitto", lambda: None)
    s = load_settings(data_dir=tmp_path, broker_port=free_port(), broker_host="127.0.0.1", port=free_port())
    caplog.set_level(logging.WARNING, logger="fleet.broker")
    service = FleetService(s)
    ctx = service.start()
    try:
        assert service.broker.kind == "amqtt" and "FOR TRIALS ONLY" in caplog.text
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="trial-dev")
        c.connect("127.0.0.1", s.broker_port)
        c.loop_start()
        c.publish(wire.topic("trial-dev", "status"), wire.encode(wire.Status(device_id="trial-dev", state="online")),
                  qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        online = False
        while time.monotonic() < deadline and not online:
            with ctx.database.session() as db:
                d = db.get(Device, "trial-dev")
                online = bool(d and d.online)
            time.sleep(0.1)
        c.loop_stop()
        c.disconnect()
        assert online
    finally:
        service.stop()
