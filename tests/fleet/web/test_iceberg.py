"""Iceberg analytics sync: batches, exactly once across restarts and crashes, partitioned by day."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from pyiceberg.catalog import load_catalog

from edgekit.errors import ConfigError
from fleet.analytics import AnalyticsSettings, IcebergSync, sync_once
from fleet.analytics.iceberg import HIGH_WATER
from fleet.db.models import Event, Telemetry

T0 = datetime(2026, 11, 20, 22, 0, tzinfo=timezone.utc)


def ingest(db, device: str, seqs, *, start=T0, step=timedelta(minutes=30), received=None):
    """Rows as the ingest writes them (one per sequence number)."""
    with db.session() as s:
        for i in seqs:
            ts = start + i * step
            s.add(Telemetry(device_id=device, seq=i, ts=ts, received_at=received or ts, model_name="tiny",
                            model_version="1.0.0", requests=10 + i, errors=i % 2, p50_ms=1.0, p95_ms=2.0 + i,
                            p99_ms=3.0, drift={"confidence_mean": 0.9}, payload={"seq": i}))
            s.add(Event(device_id=device, seq=10_000 + i, ts=ts, received_at=received or ts, kind="ota.step",
                        level="info", message=f"step {i}", data={"i": i}))


def settings(**kw) -> AnalyticsSettings:
    return AnalyticsSettings(settle_s=0, **kw)


def read_back(tmp_path, table="telemetry"):
    """Open the catalog afresh (as an analyst would) and read the whole table."""
    props = settings().catalog_properties(tmp_path)
    return load_catalog("edgekit", **props).load_table(f"edgekit.{table}").scan().to_arrow()




def test_sync_restart_sync_no_duplicates(web_db, tmp_path):
    ingest(web_db, "cam-1", range(0, 30))
    ingest(web_db, "cam-2", range(0, 25))
    first = IcebergSync(web_db, settings(batch_size=20), tmp_path)
    r = first.sync()
    assert r.rows == {"telemetry": 55, "events": 55}
    assert first.sync().total == 0  # nothing new: nothing appended

    ingest(web_db, "cam-1", range(30, 42))
    restarted = IcebergSync(web_db, settings(batch_size=20), tmp_path)  # a new process, same stores
    assert restarted.sync().rows == {"telemetry": 12, "events": 12}

    tele = read_back(tmp_path)
    assert tele.num_rows == 67
    keys = set(zip(tele["device_id"].to_pylist(), tele["seq"].to_pylist(), strict=True))
    assert len(keys) == 67  # no duplicates
    assert len(set(tele["id"].to_pylist())) == 67
    assert read_back(tmp_path, "events").num_rows == 67
    # batches of 20: 55 rows → 3 commits, 12 rows → 1 commit, each carrying its high-water id
    table = restarted.table(next(t for t in __import__("fleet.analytics.iceberg", fromlist=["TABLES"]).TABLES
                                 if t.name == "telemetry"))
    marks = [int(s.summary.additional_properties[HIGH_WATER]) for s in table.metadata.snapshots]
    assert len(marks) == 4 and marks == sorted(marks)
    assert restarted.watermark("telemetry") == max(tele["id"].to_pylist())


def test_crash_between_commit_and_watermark_is_not_duplicated(web_db, tmp_path):
    ingest(web_db, "cam-1", range(0, 10))
    crashing = IcebergSync(web_db, settings(), tmp_path)

    def crash(table, high):
        raise KeyboardInterrupt(f"killed after committing {table} up to {high}")

    crashing.after_commit = crash
    with pytest.raises(KeyboardInterrupt):
        crashing.sync()
    assert crashing.watermark("telemetry") == 0  # the watermark never got written

    ingest(web_db, "cam-1", range(10, 15))
    recovered = IcebergSync(web_db, settings(), tmp_path)
    r = recovered.sync()
    assert r.recovered["telemetry"] == 10
    assert r.rows["telemetry"] == 5
    tele = read_back(tmp_path)
    assert sorted(tele["seq"].to_pylist()) == list(range(15))


def test_partitioned_by_day(web_db, tmp_path):
    # 22:00 on the 20th, every 30 min: 8 rows span the 20th and the 21st
    ingest(web_db, "cam-1", range(8))
    syncer = IcebergSync(web_db, settings(), tmp_path)
    syncer.sync()
    table = load_catalog("edgekit", **settings().catalog_properties(tmp_path)).load_table("edgekit.telemetry")
    assert [f.name for f in table.spec().fields] == ["ts_day"]
    parts = table.inspect.partitions().to_pylist()
    counts = {str(p["partition"]["ts_day"]): p["record_count"] for p in parts}
    assert counts == {"2026-11-20": 4, "2026-11-21": 4}
    # a filtered scan reads only the matching day
    day2 = table.scan(row_filter="ts >= '2026-11-21T00:00:00+00:00'").to_arrow()
    assert day2.num_rows == 4


def test_rows_wait_until_settled(web_db, tmp_path):
    """With a settle time, only ids that were already visible ``settle_s`` ago are synced, so an
    in-flight transaction holding a lower id can never commit behind the watermark."""
    syncer = IcebergSync(web_db, AnalyticsSettings(settle_s=60), tmp_path)
    now = [1000.0]
    syncer.clock = lambda: now[0]
    syncer.sleep = lambda s: pytest.fail("the background path must not sleep")
    ingest(web_db, "cam-1", range(3))
    assert syncer.sync(wait=False).rows["telemetry"] == 0  # observed ids 1..3, none settled yet
    ingest(web_db, "cam-1", range(3, 5))
    now[0] += 30
    assert syncer.sync(wait=False).rows["telemetry"] == 0  # 30 s < 60 s
    now[0] += 31
    assert syncer.sync(wait=False).rows["telemetry"] == 3  # the first observation settled: ids ≤ 3
    now[0] += 61
    assert syncer.sync(wait=False).rows["telemetry"] == 2
    assert syncer.sync(wait=False).total == 0


def test_one_shot_sync_waits_for_the_settle_time(web_db, tmp_path):
    syncer = IcebergSync(web_db, AnalyticsSettings(settle_s=2), tmp_path)
    now, slept = [50.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    syncer.clock, syncer.sleep = (lambda: now[0]), sleep
    ingest(web_db, "cam-1", range(4))
    assert syncer.sync().rows["telemetry"] == 4
    assert slept == [2]  # once, for both tables, on a syncer's first run


def test_default_settle_depends_on_the_database(web_db, tmp_path):
    syncer = IcebergSync(web_db, AnalyticsSettings(), tmp_path)
    assert syncer.settle_s == (0.0 if web_db.url.startswith("sqlite") else 5.0)


def test_sync_once_with_a_context(web_db, tmp_path):
    ingest(web_db, "cam-9", range(4))
    ctx = SimpleNamespace(database=web_db, settings=SimpleNamespace(data_dir=tmp_path))
    assert sync_once(ctx, settings()) == 8  # 4 telemetry + 4 events
    assert sync_once(ctx, settings()) == 0


def test_bad_catalog_config_is_a_config_error(web_db, tmp_path):
    syncer = IcebergSync(web_db, settings(catalog={"type": "no-such-catalog"}), tmp_path)
    with pytest.raises(ConfigError, match="cannot open Iceberg catalog"):
        syncer.sync()


def test_catalog_configured_from_the_environment(web_db, tmp_path, monkeypatch):
    """A different catalog/warehouse (here another SQL catalog) is configuration only."""
    import json

    from fleet.analytics import load_analytics_settings

    elsewhere = tmp_path / "lake"
    (elsewhere / "wh").mkdir(parents=True)
    monkeypatch.setenv("EDGEKIT_ANALYTICS_CATALOG", json.dumps(
        {"type": "sql", "uri": f"sqlite:///{elsewhere / 'cat.db'}", "warehouse": (elsewhere / "wh").as_uri()}))
    monkeypatch.setenv("EDGEKIT_ANALYTICS_NAMESPACE", "plant7")
    monkeypatch.setenv("EDGEKIT_ANALYTICS_SETTLE_S", "0")
    s = load_analytics_settings()
    ingest(web_db, "cam-1", range(3))
    assert IcebergSync(web_db, s, tmp_path / "unused").sync().rows["telemetry"] == 3
    table = load_catalog("edgekit", **s.catalog).load_table("plant7.telemetry")
    assert table.scan().to_arrow().num_rows == 3
    assert any((elsewhere / "wh").rglob("*.parquet"))
    assert not (tmp_path / "unused" / "analytics").exists()


def test_bad_analytics_setting_is_a_config_error(monkeypatch):
    from fleet.analytics import load_analytics_settings

    monkeypatch.setenv("EDGEKIT_ANALYTICS_BATCH_SIZE", "zero")
    with pytest.raises(ConfigError, match="batch_size"):
        load_analytics_settings()


def test_the_app_runs_the_sync_for_its_lifetime(fleet_ctx, read_h, tmp_path):
    """create_app starts the loop with the app and runs a last sync when the app stops."""
    from fastapi.testclient import TestClient

    from fleet.api import create_app

    analytics = AnalyticsSettings(enabled=True, settle_s=0, interval_s=0.1)
    ingest(fleet_ctx.database, "cam-1", range(5))
    with TestClient(create_app(fleet_ctx, analytics=analytics)) as c:
        deadline = time.monotonic() + 20
        while c.get("/healthz").json()["analytics"]["rows_written"] < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        status = c.get("/healthz").json()["analytics"]
        assert status["running"] and status["rows_written"] == 10 and status["last_error"] is None
        ingest(fleet_ctx.database, "cam-2", range(3))  # arrives just before shutdown
    props = analytics.catalog_properties(fleet_ctx.settings.data_dir)
    assert load_catalog("edgekit", **props).load_table("edgekit.telemetry").scan().to_arrow().num_rows == 8


def test_analytics_off_by_environment(fleet_ctx):
    from fastapi.testclient import TestClient

    from fleet.api import create_app

    with TestClient(create_app(fleet_ctx)) as c:  # EDGEKIT_ANALYTICS_ENABLED=false (conftest)
        assert c.get("/healthz").json()["analytics"] == {"enabled": False}
    assert not (fleet_ctx.settings.data_dir / "analytics").exists()


def test_table_from_an_older_schema_gains_new_columns(web_db, tmp_path):
    """A table an older edgekit created (fewer columns) is evolved by name, its rows kept."""
    from pyiceberg.schema import Schema

    from fleet.analytics.iceberg import TELEMETRY_SCHEMA, _day_spec

    props = settings().catalog_properties(tmp_path)
    cat = load_catalog("edgekit", **props)
    cat.create_namespace_if_not_exists("edgekit")
    old = cat.create_table("edgekit.telemetry", schema=Schema(*TELEMETRY_SCHEMA.fields[:10]),
                           partition_spec=_day_spec())
    assert "p95_ms" not in {f.name for f in old.schema().fields}
    ingest(web_db, "cam-1", range(4))
    assert IcebergSync(web_db, settings(), tmp_path).sync().rows["telemetry"] == 4
    got = read_back(tmp_path)
    assert got.num_rows == 4 and got["p95_ms"].to_pylist() == [2.0, 3.0, 4.0, 5.0]


def test_a_new_destination_starts_from_the_first_row(web_db, tmp_path):
    """Watermarks are per destination: pointing the sync at another catalog backfills it in full."""
    ingest(web_db, "cam-1", range(5))
    first = IcebergSync(web_db, settings(), tmp_path / "a")
    assert first.sync().rows["telemetry"] == 5
    second = IcebergSync(web_db, settings(), tmp_path / "b")
    assert second.watermark_key("telemetry") != first.watermark_key("telemetry")
    assert second.sync().rows["telemetry"] == 5
    assert first.sync().total == 0 and second.sync().total == 0


def test_old_snapshots_expire_and_sync_goes_on(web_db, tmp_path):
    ingest(web_db, "cam-1", range(30))
    syncer = IcebergSync(web_db, settings(batch_size=10, expire_snapshots_after_s=0), tmp_path)
    assert syncer.sync().rows["telemetry"] == 30  # three batches, three snapshots...
    table = load_catalog("edgekit", **settings().catalog_properties(tmp_path)).load_table("edgekit.telemetry")
    assert len(table.metadata.snapshots) == 1  # ...of which only the current one is kept
    assert int(table.current_snapshot().summary.additional_properties[HIGH_WATER]) == syncer.watermark("telemetry")
    ingest(web_db, "cam-1", range(30, 35))
    fresh = IcebergSync(web_db, settings(expire_snapshots_after_s=0), tmp_path)  # a restart
    assert fresh.sync().rows["telemetry"] == 5
    assert sorted(read_back(tmp_path)["seq"].to_pylist()) == list(range(35))
