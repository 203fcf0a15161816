"""Ingest against a real mosquitto broker and a real SQLite database."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from edgekit import wire
from fleet.db.models import Device, Event, Telemetry
from fleet.ingest import Ingest, decode_message
from fleet.settings import load_settings

pytestmark = pytest.mark.integration


def publisher(broker, client_id="sim", will: wire.Status | None = None) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
    if will is not None:
        c.will_set(wire.topic(will.device_id, "status"), wire.encode(will), qos=1, retain=True)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def pub(c: mqtt.Client, device: str, kind: str, payload, retain=False) -> None:
    raw = payload if isinstance(payload, bytes) else wire.encode(payload)
    c.publish(wire.topic(device, kind), raw, qos=1, retain=retain).wait_for_publish(5)


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def settings(mosquitto, tmp_path):
    return load_settings(data_dir=tmp_path, broker_url=mosquitto.url, ingest_flush_s=0.05)


def test_ingest_stores_dedups_and_counts_invalid(mosquitto, settings, db):
    c = publisher(mosquitto)
    # a device that was born before the fleet started: its retained birth must still register it
    pub(c, "cam-1", "status", wire.Status(device_id="cam-1", state="online", profile="x86-avx2",
                                          tags=["line-3", "group=eu"], agent_version="0.1.0",
                                          model=wire.ModelRef(name="tiny", version="1.0.0")), retain=True)
    with Ingest(settings, db) as ing:
        assert wait_for(lambda: ing.stats.received >= 1)
        for seq in range(1, 6):
            pub(c, "cam-1", "telemetry", wire.Telemetry(device_id="cam-1", seq=seq, requests=10, errors=1,
                                                         model=wire.ModelRef(name="tiny", version="1.0.0"),
                                                         latency=wire.LatencyStats(p95_ms=3.5)))
        pub(c, "cam-1", "events", wire.Event(device_id="cam-1", seq=6, kind="ota.download", message="go"))
        # the device's spool replays seq 3..6 after a reconnect: stored once
        for seq in range(3, 6):
            pub(c, "cam-1", "telemetry", wire.Telemetry(device_id="cam-1", seq=seq, replayed=True))
        pub(c, "cam-1", "events", wire.Event(device_id="cam-1", seq=6, kind="ota.download", replayed=True))
        # bad input: not JSON, schema violation, another device's id, unknown payload version
        pub(c, "cam-1", "telemetry", b"{not json")
        pub(c, "cam-1", "telemetry", b'{"device_id": "cam-1", "seq": -4}')
        pub(c, "cam-1", "events", wire.Event(device_id="cam-2", seq=1, kind="spoof"))
        pub(c, "cam-1", "reported", b'{"v": 99, "device_id": "cam-1"}')
        pub(c, "cam-1", "reported", wire.Reported(device_id="cam-1", active=wire.ModelRef(name="tiny", version="1.0.0"),
                                                  ota_state="installed", generation=3, rollout_id="r-x",
                                                  golden=wire.GoldenResult(passed=True, accuracy=1.0)))
        assert wait_for(lambda: ing.stats.received >= 16)
        assert ing.wait_idle()
        stats = ing.stats.snapshot()
    assert stats["invalid"] == 4, stats
    assert stats["duplicates"] == 4, stats
    assert stats["received"] == 16 and stats["stored"] == 8 and stats["pending"] == 0, stats
    assert "unsupported payload version 99" in stats["last_error"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Telemetry)) == 5
        assert s.scalar(select(func.count()).select_from(Event)) == 1
        t = s.scalar(select(Telemetry).where(Telemetry.seq == 3))
        assert t.replayed is False and t.p95_ms == 3.5 and t.model_version == "1.0.0"
        d = s.get(Device, "cam-1")
        assert d.online and d.profile == "x86-avx2" and d.tags == ["line-3", "group=eu"] and d.group == "eu"
        assert (d.active_name, d.active_version, d.ota_state, d.reported_generation) == ("tiny", "1.0.0", "installed", 3)
        assert d.golden_passed is True and d.agent_version == "0.1.0"
        assert s.get(Device, "cam-2") is None, "a spoofed payload registers nothing"
        s.get(Device, "cam-1").tags = ["line-3", "group=eu", "operator-tag"]  # as edited through the API
    with Ingest(settings, db) as ing:  # the device is born again (reconnect) with a new tag of its own
        pub(c, "cam-1", "status", wire.Status(device_id="cam-1", state="online", tags=["line-3", "new"]), retain=True)
        assert wait_for(lambda: ing.stats.stored >= 1) and ing.wait_idle()
    with db.session() as s:
        assert s.get(Device, "cam-1").tags == ["line-3", "group=eu", "operator-tag", "new"]
    c.loop_stop()
    c.disconnect()


def test_last_will_marks_device_offline_and_birth_online(mosquitto, settings, db):
    with Ingest(settings, db) as ing:
        will = wire.Status(device_id="pi-7", state="offline")
        dev = publisher(mosquitto, "pi-7", will=will)
        pub(dev, "pi-7", "status", wire.Status(device_id="pi-7", state="online", profile="raspberry-pi-5"), retain=True)

        def online():
            with db.session() as s:
                d = s.get(Device, "pi-7")
                return d is not None and d.online

        assert wait_for(online)
        dev.loop_stop()
        dev.socket().close()  # connection lost without DISCONNECT: the broker publishes the last will
        assert wait_for(lambda: not online()), "last will did not mark the device offline"
        assert ing.wait_idle()
        with db.session() as s:
            d = s.get(Device, "pi-7")
            assert d.profile == "raspberry-pi-5" and d.first_seen is not None and d.last_seen is not None


def test_two_replicas_split_telemetry_through_the_shared_subscription(mosquitto, settings, db):
    a = Ingest(settings.model_copy(update={"replica_id": "replica-a"}), db)
    b = Ingest(settings.model_copy(update={"replica_id": "replica-b"}), db)
    with a, b:
        c = publisher(mosquitto)
        for seq in range(1, 201):
            c.publish(wire.topic("cam-9", "telemetry"), wire.encode(wire.Telemetry(device_id="cam-9", seq=seq)), qos=1)
        assert wait_for(lambda: a.stats.received + b.stats.received >= 200)
        assert a.wait_idle() and b.wait_idle()
        assert a.stats.received > 0 and b.stats.received > 0, "both replicas get a share"
        assert a.stats.received + b.stats.received == 200, "each message goes to exactly one replica"
        c.loop_stop()
        c.disconnect()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Telemetry)) == 200


def test_decode_message_rejects_foreign_topics():
    from edgekit.errors import WireError

    with pytest.raises(WireError, match="not an edgekit v1 topic"):
        decode_message("other/v1/x/telemetry", b"{}", 0.0)
    with pytest.raises(WireError, match="desired"):
        decode_message("edgekit/v1/x/desired", b"{}", 0.0)
    assert decode_message("edgekit/v1/x/status", b"", 0.0) is None


def test_database_errors_are_retried_without_losing_messages(mosquitto, settings, db, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import fleet.ingest as ingest_mod

    real = ingest_mod.store_batch
    failures = [2]

    def flaky(session, batch):
        if failures[0]:
            failures[0] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(session, batch)

    monkeypatch.setattr(ingest_mod, "store_batch", flaky)
    with Ingest(settings, db) as ing:
        c = publisher(mosquitto)
        for seq in range(1, 21):
            c.publish(wire.topic("cam-5", "telemetry"), wire.encode(wire.Telemetry(device_id="cam-5", seq=seq)), qos=1)
        assert wait_for(lambda: ing.stats.received >= 20)
        assert ing.wait_idle()
        assert ing.stats.db_errors == 2 and "database is locked" in ing.stats.last_error
        c.loop_stop()
        c.disconnect()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Telemetry)) == 20


def test_ingest_survives_a_broker_restart(mosquitto, settings, db):
    with Ingest(settings, db) as ing:
        c = publisher(mosquitto, "before")
        pub(c, "cam-8", "telemetry", wire.Telemetry(device_id="cam-8", seq=1))
        assert wait_for(lambda: ing.stats.stored >= 1)
        c.loop_stop()
        c.disconnect()
        mosquitto.stop()
        time.sleep(0.5)
        mosquitto.start()
        # the ingest reconnects by itself and subscribes again
        c = publisher(mosquitto, "after")

        def delivered():
            c.publish(wire.topic("cam-8", "telemetry"), wire.encode(wire.Telemetry(device_id="cam-8", seq=2)), qos=1)
            return wait_for(lambda: ing.stats.stored + ing.stats.duplicates >= 2, timeout=1.0)

        assert wait_for(delivered, timeout=30), "ingest did not resume after the broker came back"
        c.loop_stop()
        c.disconnect()
    with db.session() as s:
        assert sorted(s.scalars(select(Telemetry.seq).where(Telemetry.device_id == "cam-8"))) == [1, 2]


def test_telemetry_sent_while_the_fleet_is_down_is_not_lost(mosquitto, settings, db):
    """The ingest's MQTT 5 session outlives a fleet restart: the broker queues what devices send meanwhile."""
    with Ingest(settings, db) as ing:
        assert ing.wait_idle()
    c = publisher(mosquitto)  # the fleet manager is down now
    for seq in range(1, 51):
        c.publish(wire.topic("cam-3", "telemetry"), wire.encode(wire.Telemetry(device_id="cam-3", seq=seq)),
                  qos=1).wait_for_publish(5)
    pub(c, "cam-3", "events", wire.Event(device_id="cam-3", seq=51, kind="boot"))
    c.loop_stop()
    c.disconnect()
    with Ingest(settings, db) as ing:  # restarted: same replica id, same session
        assert wait_for(lambda: ing.stats.received >= 51)
        assert ing.wait_idle()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Telemetry)) == 50
        assert s.scalar(select(func.count()).select_from(Event)) == 1


def test_clean_sessions_when_expiry_is_zero(mosquitto, settings, db):
    clean = settings.model_copy(update={"ingest_session_expiry_s": 0})
    with Ingest(clean, db) as ing:
        assert ing.wait_idle()
    c = publisher(mosquitto)
    pub(c, "cam-4", "telemetry", wire.Telemetry(device_id="cam-4", seq=1))
    c.loop_stop()
    c.disconnect()
    with Ingest(clean, db) as ing:
        time.sleep(1.0)
        assert ing.stats.received == 0, "a clean session does not get what was sent while it was away"


def test_device_timestamps_are_stored_in_utc(db):
    from datetime import datetime, timedelta, timezone

    from fleet.store import Message, store_batch

    plus2 = timezone(timedelta(hours=2))
    local = datetime(2026, 5, 1, 14, 0, tzinfo=plus2)  # 12:00 UTC
    now = datetime.now(timezone.utc)
    with db.session() as s:
        store_batch(s, [Message("telemetry", "tz-dev", wire.Telemetry(device_id="tz-dev", seq=1, ts=local), now),
                        Message("events", "tz-dev", wire.Event(device_id="tz-dev", seq=2, ts=local, kind="x"), now)])
    with db.session() as s:
        for table in (Telemetry, Event):
            ts = s.scalar(select(table.ts))
            assert ts.replace(tzinfo=timezone.utc) == datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def test_stored_rows_read_back_exactly(db):
    """The SQLite fast path writes what the ORM reads: types, JSON, booleans, NULLs."""
    from datetime import datetime, timezone

    from fleet.store import Message, store_batch

    now = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    t = wire.Telemetry(device_id="rt", seq=7, ts=now, replayed=True, model=wire.ModelRef(name="m", version="2"),
                       requests=9, errors=1, latency=wire.LatencyStats(p50_ms=1.5, p95_ms=2.5, p99_ms=None),
                       cpu_percent=3.0, drift=wire.DriftStats(confidence_mean=0.75, predictions={"a": 3}))
    e = wire.Event(device_id="rt", seq=8, ts=now, kind="ota.failed", level="error", message="boom",
                   rollout_id="r-1", data={"step": "loading", "n": 2})
    with db.session() as s:
        res = store_batch(s, [Message("telemetry", "rt", t, now), Message("events", "rt", e, now)])
    assert res.stored == 2 and res.duplicates == 0
    with db.session() as s:
        row = s.scalar(select(Telemetry))
        assert (row.device_id, row.seq, row.replayed, row.model_name, row.model_version) == ("rt", 7, True, "m", "2")
        assert (row.requests, row.errors, row.p50_ms, row.p95_ms, row.p99_ms) == (9, 1, 1.5, 2.5, None)
        assert row.ts.replace(tzinfo=timezone.utc) == now and row.received_at.replace(tzinfo=timezone.utc) == now
        assert row.drift["confidence_mean"] == 0.75 and row.drift["predictions"] == {"a": 3}
        assert row.payload["seq"] == 7 and row.payload["latency"]["p95_ms"] == 2.5 and row.memory_mb is None
        ev = s.scalar(select(Event))
        assert (ev.kind, ev.level, ev.message, ev.rollout_id, ev.data, ev.replayed) == (
            "ota.failed", "error", "boom", "r-1", {"step": "loading", "n": 2}, False)


def test_messages_received_but_not_committed_are_redelivered_after_a_crash(mosquitto, settings, db, monkeypatch):
    """At-least-once end to end: a message is acknowledged to the broker only after its batch is committed."""
    import threading

    from sqlalchemy.exc import OperationalError

    import fleet.ingest as ingest_mod

    real = ingest_mod.store_batch
    broken: set[threading.Thread] = set()

    def store(session, batch):
        if threading.current_thread() in broken:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        return real(session, batch)

    monkeypatch.setattr(ingest_mod, "store_batch", store)
    first = Ingest(settings, db).start()
    broken.add(first._writer)  # this process's database writes fail...
    c = publisher(mosquitto)
    for seq in range(1, 6):
        c.publish(wire.topic("cam-6", "telemetry"), wire.encode(wire.Telemetry(device_id="cam-6", seq=seq)),
                  qos=1).wait_for_publish(5)
    assert wait_for(lambda: first.stats.received >= 5 and first.stats.db_errors >= 1)
    first.stop(timeout=0.5)  # ...and then it dies with the batch unwritten (its writer never succeeds)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Telemetry)) == 0
    with Ingest(settings, db) as second:  # the next start gets the unacknowledged messages again
        assert wait_for(lambda: second.stats.received >= 5), second.stats.snapshot()
        assert second.wait_idle()
    c.loop_stop()
    c.disconnect()
    with db.session() as s:
        assert sorted(s.scalars(select(Telemetry.seq))) == [1, 2, 3, 4, 5]
