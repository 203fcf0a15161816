"""The spool pump's bookkeeping with a scripted stand-in for paho (unit): a row leaves the spool only on
its own PUBACK, even when the PUBACK races ahead of the pump recording the message id."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from paho.mqtt.enums import MQTTErrorCode

from devices.agent.config import MqttConfig
from devices.agent.mqtt import MqttLink
from devices.agent.spool import Spool
from edgekit.wire import Event, Status


class ScriptedClient:
    """publish() hands out increasing mids; PUBACKs are delivered when the test says so."""

    def __init__(self, link_ref: list, early: bool = False):
        self.link_ref = link_ref
        self.mid = 0
        self.early = early
        self.published: list[tuple[int, str, dict]] = []

    def publish(self, topic, payload, qos=0, retain=False):
        self.mid += 1
        self.published.append((self.mid, topic, json.loads(payload)))
        if self.early:  # the broker's PUBACK arrives before publish() has even returned
            self.link_ref[0]._on_publish(self, None, self.mid, None, None)
        return SimpleNamespace(mid=self.mid, rc=MQTTErrorCode.MQTT_ERR_SUCCESS)

    def subscribe(self, *args, **kwargs):
        return (MQTTErrorCode.MQTT_ERR_SUCCESS, 0)


def _link(tmp_path, early=False):
    spool = Spool(tmp_path / "s.sqlite")
    link = MqttLink(MqttConfig(url="mqtt://127.0.0.1:1", device_id="d1"), spool,
                    birth=lambda: Status(device_id="d1", state="online"), on_desired=lambda raw: None)
    ref = [link]
    link.client = ScriptedClient(ref, early)
    return link, spool


def _event(seq: int) -> Event:
    return Event(device_id="d1", seq=seq, kind="test", message=str(seq))


def test_rows_leave_the_spool_only_on_their_puback(tmp_path):
    link, spool = _link(tmp_path)
    for _ in range(3):
        link.emit_event(_event)  # not connected yet: deferred
    link.connected.set()
    link._pump_once()
    pub = link.client.published
    assert [p[2]["seq"] for p in pub] == [1, 2, 3]
    assert all(p[2]["replayed"] for p in pub), "spooled while offline → marked replayed"
    assert len(spool) == 3 and link.inflight == 3
    link._on_publish(None, None, pub[1][0], None, None)
    assert [json.loads(r.payload)["seq"] for r in spool.pending()] == [1, 3]
    link.emit_event(_event)
    link._pump_once()
    assert link.client.published[-1][2] == {**link.client.published[-1][2], "seq": 4, "replayed": False}


def test_early_puback_is_matched_and_a_stale_one_is_not(tmp_path):
    link, spool = _link(tmp_path, early=True)
    link.connected.set()
    link.emit_event(_event)
    link._pump_once()
    assert len(spool) == 0 and link.inflight == 0, "an early PUBACK must still delete its row"
    # A PUBACK for a message the pump did not send (e.g. the retained status) arrives...
    link._on_publish(None, None, 99, None, None)
    time.sleep(0.01)
    # ...and much later the pump happens to get mid 99: the stale PUBACK must not delete the new row.
    link.client.early = False
    link.client.mid = 98
    link.emit_event(_event)
    link._pump_once()
    assert link.client.published[-1][0] == 99
    assert len(spool) == 1, "a stale PUBACK deleted a row the broker never acknowledged"


def test_after_reconnect_in_flight_messages_go_first(tmp_path):
    link, spool = _link(tmp_path)
    link.connected.set()
    link.emit_event(_event)
    link._pump_once()
    first_mid = link.client.published[-1][0]
    link._on_disconnect(None, None, None, None, None)
    link.emit_event(_event)  # spooled during the outage
    # paho re-sends the in-flight message itself on reconnect; the pump waits for it to be acknowledged.
    link._on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)
    n = len(link.client.published)
    link._pump_once()
    assert len(link.client.published) == n, "new rows overtook the message paho is re-sending"
    link._on_publish(None, None, first_mid, None, None)
    link._pump_once()
    last = link.client.published[-1][2]
    assert last["seq"] == 2 and last["replayed"] is True


def test_latest_reported_is_republished_after_pahos_resend_of_an_older_one(tmp_path):
    from edgekit.wire import Reported

    link, _ = _link(tmp_path)
    link.connected.set()
    link.publish_reported(Reported(device_id="d1", ota_state="downloading"))
    old_mid = link.client.published[-1][0]
    link._on_disconnect(None, None, None, None, None)
    link.publish_reported(Reported(device_id="d1", ota_state="installed"))  # while offline: not sent
    link._on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)

    def reported_sent():
        return [p for p in link.client.published if p[1].endswith("/reported")]

    # Inside on_connect paho has not re-sent the older one yet: publishing there would be overtaken.
    assert len(reported_sent()) == 1
    link._pump_once()
    assert len(reported_sent()) == 1, "must wait until paho's re-send of the older 'reported' is through"
    link._on_publish(None, None, old_mid, None, None)  # the re-sent old one is acknowledged
    link._pump_once()
    topic_, payload = link.client.published[-1][1:]
    assert topic_.endswith("/reported") and payload["ota_state"] == "installed"
    link._pump_once()
    assert len(reported_sent()) == 2, "sent exactly once more"
