"""Migrations, ingest and a rollout against a real PostgreSQL server (started by the fixture)."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, inspect, select

from edgekit import wire
from fleet.db.base import Base, Database
from fleet.db.migrate import current_revision, head_revision, upgrade
from fleet.db.models import Device, Event, Telemetry
from fleet.ingest import Ingest
from fleet.registry import BundleRegistry
from fleet.rollouts import RolloutManager, RolloutSpec
from fleet.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def pg(postgres_url):
    db = Database(postgres_url)
    upgrade(db)
    yield db
    db.dispose()


def test_migrations_create_every_table(pg):
    import fleet.db.models  # noqa: F401
    import fleet.db.web_models  # noqa: F401

    assert current_revision(pg) == head_revision()
    tables = set(inspect(pg.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    upgrade(pg)  # idempotent
    assert current_revision(pg) == head_revision()


def test_ingest_and_rollout_on_postgres(pg, mosquitto, tmp_path, signing_keys, bundles):
    settings = load_settings(data_dir=tmp_path, broker_url=mosquitto.url, ingest_flush_s=0.05)
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="sim")
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    with Ingest(settings, pg) as ing:
        for dev in ("pg-1", "pg-2"):
            c.publish(wire.topic(dev, "status"), wire.encode(wire.Status(
                device_id=dev, state="online", tags=["pg"], model=wire.ModelRef(name="tiny", version="1.0.0"))),
                qos=1, retain=True)
            for seq in (1, 2, 3, 2, 3):  # two replays
                c.publish(wire.topic(dev, "telemetry"), wire.encode(wire.Telemetry(
                    device_id=dev, seq=seq, model=wire.ModelRef(name="tiny", version="1.0.0"),
                    latency=wire.LatencyStats(p95_ms=5.0), requests=10)), qos=1)
            c.publish(wire.topic(dev, "events"), wire.encode(wire.Event(device_id=dev, seq=4, kind="boot")), qos=1)
            c.publish(wire.topic(dev, "events"), wire.encode(wire.Event(device_id=dev, seq=4, kind="boot")), qos=1)
        deadline = time.monotonic() + 10
        while ing.stats.received < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ing.wait_idle()
        assert ing.stats.duplicates == 6 and ing.stats.invalid == 0, ing.stats.snapshot()
    c.loop_stop()
    c.disconnect()
    with pg.session() as s:
        assert s.scalar(select(func.count()).select_from(Telemetry)) == 6
        assert s.scalar(select(func.count()).select_from(Event)) == 2
        assert s.get(Device, "pg-1").online

    _, pub, _ = signing_keys
    registry = BundleRegistry(pg, tmp_path / "artifacts", [pub], "http://fleet.test")
    registry.upload(bundles["1.0.0"])
    registry.upload(bundles["2.0.0"])
    published: dict[str, wire.Desired | None] = {}

    class Recorder:
        def publish(self, device_id, desired):
            published[device_id] = desired

    manager = RolloutManager(pg, registry, Recorder())
    st = manager.create(RolloutSpec.build(bundle="tiny@2.0.0", selector="tag=pg", waves="50,100", soak_s=0))
    for _ in range(6):
        manager.tick()
        with pg.session() as s:  # the devices install whatever they were told
            for dev_id, desired in published.items():
                d = s.get(Device, dev_id)
                d.active_name, d.active_version = desired.bundle.name, desired.bundle.version
                d.ota_state, d.reported_generation, d.reported_rollout_id = "installed", desired.generation, st.id
    final = manager.status(st.id)
    assert final.state == "completed", final
    assert {d.bundle.version for d in published.values()} == {"2.0.0"} and len(published) == 2


def test_a_row_postgres_refuses_is_isolated_not_retried_forever(pg, mosquitto, tmp_path):
    settings = load_settings(data_dir=tmp_path, broker_url=mosquitto.url, ingest_flush_s=0.3)
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="sim-poison")
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    with Ingest(settings, pg) as ing:
        for seq in (1, 2, 3):
            # a NUL byte: valid JSON and wire (strings there are bounded like the columns), but PostgreSQL
            # refuses it in a text column
            name = "ti\x00ny" if seq == 2 else "tiny"
            c.publish(wire.topic("pg-9", "telemetry"), wire.encode(wire.Telemetry(
                device_id="pg-9", seq=seq, model=wire.ModelRef(name=name, version="1"))), qos=1)
        deadline = time.monotonic() + 60
        while ing.stats.received < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ing.stats.received == 3, ing.stats.snapshot()
        assert ing.wait_idle(60), ing.stats.snapshot()
        assert ing.stats.invalid == 1 and ing.stats.stored == 2, ing.stats.snapshot()
        assert ing.stats.db_errors >= 1, "the database, not the wire check, refused it"
    c.loop_stop()
    c.disconnect()
    with pg.session() as s:
        assert sorted(s.scalars(select(Telemetry.seq))) == [1, 3]
