"""End to end: simulated devices publish telemetry (with spool replays) to a real mosquitto, the fleet's
real ingest stores it, the background Iceberg sync copies it; after a restart more arrives and is
synced; reading the table back with pyiceberg gives exactly the telemetry ingested, no duplicates."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pyiceberg.catalog import load_catalog
from sqlalchemy import func, select

from edgekit import wire
from fleet.analytics import AnalyticsSettings, BackgroundSync, IcebergSync
from fleet.db.models import Event, Telemetry
from fleet.ingest import Ingest
from fleet.settings import FleetSettings

pytestmark = pytest.mark.integration

DEVICES = [f"dev-{i:02d}" for i in range(8)]


def publisher(broker) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="sim-devices")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def publish(client, seqs, *, replayed=False):
    infos = []
    for d in DEVICES:
        for s in seqs:
            t = wire.Telemetry(device_id=d, seq=s, replayed=replayed, requests=50, errors=0,
                               model=wire.ModelRef(name="tiny", version="1.0.0"),
                               latency=wire.LatencyStats(p50_ms=1.0, p95_ms=2.0 + s % 3))
            infos.append(client.publish(wire.topic(d, "telemetry"), wire.encode(t), qos=1))
        e = wire.Event(device_id=d, seq=100_000 + seqs[-1], kind="ota.step", message="m")
        infos.append(client.publish(wire.topic(d, "events"), wire.encode(e), qos=1))
    for i in infos:
        i.wait_for_publish(10)
    return len(infos)


def wait_for(ingest: Ingest, received: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while ingest.stats.received < received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ingest.stats.received >= received, f"only {ingest.stats.received}/{received} messages arrived"
    assert ingest.wait_idle(timeout)


def test_ingested_telemetry_lands_in_iceberg_exactly_once(mosquitto, sqlite_db, tmp_path):
    settings = FleetSettings(data_dir=tmp_path, database_url=sqlite_db.url, broker_url=mosquitto.url,
                             ingest_flush_s=0.05)
    analytics = AnalyticsSettings(enabled=True, settle_s=0, interval_s=0.2, batch_size=50)
    dev = publisher(mosquitto)
    try:
        with Ingest(settings, sqlite_db) as ingest:
            time.sleep(0.3)  # subscriptions in place
            sent = publish(dev, list(range(0, 20)))
            sent += publish(dev, list(range(10, 20)), replayed=True)  # a spool replays half of it
            wait_for(ingest, sent)
            assert ingest.stats.duplicates == len(DEVICES) * (10 + 1)  # 10 telemetry + the repeated event

            syncer = IcebergSync(sqlite_db, analytics, tmp_path)
            loop = BackgroundSync(syncer).start()
            deadline = time.monotonic() + 30
            while syncer.watermark("telemetry") < _max_id(sqlite_db) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert syncer.watermark("telemetry") == _max_id(sqlite_db), "the background sync did not catch up"
            assert _table(tmp_path).scan().to_arrow().num_rows == len(DEVICES) * 20
            loop.stop()  # "restart": the loop and its catalog handle go away

            sent2 = publish(dev, list(range(20, 27)))
            wait_for(ingest, sent + sent2)
        restarted = IcebergSync(sqlite_db, analytics, tmp_path)
        result = restarted.sync()
        assert result.rows["telemetry"] == len(DEVICES) * 7
        assert restarted.sync().total == 0
    finally:
        dev.loop_stop()
        dev.disconnect()

    with sqlite_db.session() as s:
        ingested = s.scalar(select(func.count()).select_from(Telemetry))
        events = s.scalar(select(func.count()).select_from(Event))
    assert ingested == len(DEVICES) * 27
    table = _table(tmp_path).scan().to_arrow()
    assert table.num_rows == ingested
    keys = list(zip(table["device_id"].to_pylist(), table["seq"].to_pylist(), strict=True))
    assert len(set(keys)) == len(keys)
    assert sorted({s for d, s in keys if d == "dev-03"}) == list(range(27))
    assert _table(tmp_path, "events").scan().to_arrow().num_rows == events


def _table(tmp_path, name="telemetry"):
    props = AnalyticsSettings().catalog_properties(tmp_path)
    return load_catalog("edgekit", **props).load_table(f"edgekit.{name}")


def _max_id(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.max(Telemetry.id))) or 0
