"""The agent against a real mosquitto: birth/reported/telemetry, OTA over MQTT, store-and-forward through
a broker outage (spooled, replayed in order, marked), and an agent restart that keeps the spool and seq."""

from __future__ import annotations

import shutil
import time

import httpx
import numpy as np
import pytest
from agent_testlib import MqttRecorder, desired_for, wait_for

pytestmark = pytest.mark.integration
DEV = "cam-1"


def _mqtt(broker, interval=0.1):
    return {"url": broker.url, "device_id": DEV, "telemetry_interval_s": interval}


def _infer(agent, n=1):
    x = np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32)
    r = httpx.post(f"http://127.0.0.1:{agent.port}/v2/models/tiny/infer",
                   json={"inputs": [{"name": "image", "shape": [n, 1, 8, 8], "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_birth_reported_telemetry_and_drift(mosquitto, agent_factory, bundles):
    rec = MqttRecorder(mosquitto, DEV)
    try:
        agent = agent_factory(bundle=str(bundles["v1"]), mqtt=_mqtt(mosquitto, 0.2))
        for _ in range(5):
            _infer(agent)
        wait_for(lambda: any(t["requests"] >= 1 for t in rec.of("telemetry")), 10, what="telemetry with requests")
        status = rec.of("status")[-1]
        assert status["state"] == "online" and status["model"] == {"name": "tiny", "version": "1.0.0"}
        assert status["profile"] == "x86-avx2"
        rep = rec.of("reported")[-1]
        assert rep["active"]["version"] == "1.0.0"
        t = next(t for t in rec.of("telemetry") if t["requests"] >= 1)
        assert t["model"]["version"] == "1.0.0" and t["latency"]["p50_ms"] > 0
        assert t["memory_mb"] > 0 and t["cpu_percent"] is not None
        assert t["drift"]["inputs"]["image"]["count"] >= 64
        assert sum(t["drift"]["predictions"].values()) >= 1
        assert set(t["drift"]["predictions"]) <= {"a", "b", "c"}
        seqs = rec.seqs()
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        agent.stop()
        wait_for(lambda: rec.of("status")[-1]["state"] == "offline", 5, what="offline status")
    finally:
        rec.close()


def test_ota_over_mqtt_reports_every_step(mosquitto, agent_factory, bundles, file_server):
    rec = MqttRecorder(mosquitto, DEV)
    try:
        agent = agent_factory(bundle=str(bundles["v1"]), mqtt=_mqtt(mosquitto, 1.0))
        shutil.copyfile(bundles["v2"], file_server.root / "v2.ekb")
        rec.publish("desired", desired_for(DEV, bundles["v2"], file_server.url("v2.ekb")), retain=True)
        wait_for(lambda: rec.events("ota.installed"), 20, what="ota.installed event")
        assert _infer(agent)["model_version"] == "2.0.0"
        states = [r["ota_state"] for r in rec.of("reported")]
        for s in ("downloading", "verifying", "checking", "soaking", "installed"):
            assert s in states
        assert rec.of("reported")[-1]["rollout_id"] == "r1"
        ev = [e["kind"] for e in rec.of("events")]
        ev = ev[ev.index("ota.accepted"):]  # before it: installing the seed bundle at first boot
        assert ev.index("ota.download") < ev.index("ota.verify") < ev.index("ota.switch") < ev.index("ota.installed")
        seqs = [m["seq"] for m in rec.of("events") + rec.of("telemetry")]
        assert len(set(seqs)) == len(seqs), "seq is one counter across telemetry and events"
        rec.publish("desired", b"{garbage", retain=True)
        wait_for(lambda: rec.events("desired.rejected"), 10, what="rejection event")
        assert _infer(agent)["model_version"] == "2.0.0"
    finally:
        rec.publish("desired", b"", retain=True)
        rec.close()


def test_broker_outage_spools_and_replays_in_order_without_loss(durable_broker, agent_factory, bundles):
    rec = MqttRecorder(durable_broker, DEV, persistent=True)
    try:
        agent = agent_factory(bundle=str(bundles["v1"]), mqtt=_mqtt(durable_broker, 0.1))
        wait_for(lambda: len(rec.of("telemetry")) >= 3, 10, what="telemetry before the outage")
        durable_broker.stop()
        wait_for(lambda: not agent.mqtt.connected.is_set(), 5, what="agent noticing the outage")
        time.sleep(2.0)
        spooled = len(agent.spool)
        assert spooled >= 10, f"only {spooled} messages spooled during the outage"
        durable_broker.start()
        wait_for(lambda: agent.mqtt.connected.is_set(), 20, what="reconnect")
        wait_for(lambda: len(agent.spool) <= 2, 20, what="spool drained")
        time.sleep(0.5)
        last = agent.spool.seq
        wait_for(lambda: max(rec.seqs()) >= last - 2, 10, what="the newest telemetry")
        dedup = list(dict.fromkeys(rec.seqs()))
        assert dedup == sorted(dedup), "replayed out of order"
        missing = sorted(set(range(1, dedup[-1] + 1)) - set(dedup))
        assert not missing, f"lost messages: seq {missing[:10]}"
        replayed = [t for t in rec.of("telemetry") if t["replayed"]]
        assert len(replayed) >= 10
        assert agent.spool.evicted == 0
    finally:
        rec.close()


def test_restart_keeps_the_spool_and_the_sequence(tmp_path, mosquitto, agent_factory, bundles):
    state = tmp_path / "state-restart"
    # Broker down from the start: everything goes to the spool.
    mosquitto.stop()
    agent = agent_factory(state, bundle=str(bundles["v1"]), mqtt=_mqtt(mosquitto, 0.05))
    wait_for(lambda: len(agent.spool) >= 5, 10, what="spooled telemetry")
    agent.stop()
    from devices.agent.spool import Spool

    sp = Spool(state / "spool.sqlite")
    kept, kept_seq = len(sp), sp.seq
    sp.close()
    assert kept >= 5
    mosquitto.start()
    rec = MqttRecorder(mosquitto, DEV)
    try:
        agent2 = agent_factory(state, bundle=str(bundles["v1"]), mqtt=_mqtt(mosquitto, 0.2))
        wait_for(lambda: len(agent2.spool) == 0 and len(rec.of("telemetry")) > kept, 20, what="replay after restart")
        msgs = rec.of("telemetry") + rec.of("events")
        old = [m for m in msgs if m["seq"] <= kept_seq]
        assert {m["seq"] for m in old} == set(range(kept_seq - kept + 1, kept_seq + 1))
        assert all(m["replayed"] for m in old), "spooled messages must be marked replayed"
        newer = [m["seq"] for m in msgs if m["seq"] > kept_seq]
        assert newer and min(newer) == kept_seq + 1, "seq restarted instead of continuing"
        assert all(m["device_id"] == DEV for m in msgs)
    finally:
        rec.close()


def test_full_spool_evicts_oldest_first_and_reports_the_count(durable_broker, agent_factory, bundles):
    rec = MqttRecorder(durable_broker, DEV, persistent=True)
    try:
        agent = agent_factory(bundle=str(bundles["v1"]), mqtt=_mqtt(durable_broker, 0.05), spool={"max_messages": 10})
        wait_for(lambda: len(rec.of("telemetry")) >= 2, 10, what="telemetry before the outage")
        durable_broker.stop()
        wait_for(lambda: agent.spool.evicted >= 10, 15, what="evictions while the broker is down")
        durable_broker.start()
        wait_for(lambda: any(t["spool_evicted"] >= 10 for t in rec.of("telemetry")), 20, what="reported evictions")
        evicted = agent.spool.evicted
        last = agent.spool.seq
        wait_for(lambda: max(rec.seqs()) >= last, 10, what="newest message")
        seen = set(rec.seqs())
        missing = sorted(set(range(1, max(seen) + 1)) - seen)
        # Exactly the evicted messages are missing, and they are the oldest of the outage (one run).
        assert 0 < len(missing) <= evicted
        assert missing == list(range(missing[0], missing[-1] + 1)), "eviction was not oldest-first"
    finally:
        rec.close()
