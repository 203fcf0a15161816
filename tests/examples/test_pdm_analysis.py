"""The analysis script: drift/fault-rate maths on telemetry rows, and reading real Iceberg tables."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from examples.predictive_maintenance import analysis

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _rows(device: str, stream: list[tuple[int, float, float, dict[str, int]]], start_seq: int = 0) -> list[dict]:
    """Telemetry rows with running (count, mean, std) of input ``rms`` and the interval's predictions."""
    rows = []
    for i, (count, mean, std, preds) in enumerate(stream):
        drift = {"inputs": {"rms": {"count": count, "mean": mean, "std": std}}, "predictions": preds,
                 "confidence_mean": 0.9}
        rows.append({"device_id": device, "seq": start_seq + i, "ts": T0 + timedelta(seconds=2 * i),
                     "p50_ms": 0.5 + 0.01 * i, "p95_ms": 0.9, "requests": sum(preds.values()),
                     "model_name": "bearing-fault-x86", "model_version": "1.0.0", "drift_json": json.dumps(drift)})
    return rows


def _running(values: list[np.ndarray]) -> list[tuple[int, float, float]]:
    seen, out = np.array([]), []
    for v in values:
        seen = np.concatenate([seen, v])
        out.append((seen.size, float(seen.mean()), float(seen.std())))
    return out


def test_interval_means_are_recovered_from_running_statistics():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(1.0, 0.1, 50) for _ in range(4)] + [rng.normal(2.0, 0.1, 50) for _ in range(4)]
    stream = [(c, m, s, {"healthy": 8}) for c, m, s in _running(chunks)]
    s = analysis.compute_series(_rows("pump-01", stream), baseline=0.25)["pump-01"]
    z = np.asarray(s.drift_z["rms"])
    assert np.all(np.abs(z[:4]) < 1.0)  # the reference phase sits at the baseline
    assert np.all(z[4:] > 5.0)  # the shifted phase stands out clearly
    per = analysis._interval_means(_running(chunks))
    np.testing.assert_allclose([m for m, _, _ in per], [c.mean() for c in chunks], rtol=1e-9)


def test_a_restart_of_the_running_statistics_is_not_read_as_drift():
    stream = [(10, 1.0, 0.1, {}), (20, 1.0, 0.1, {}), (10, 1.0, 0.1, {}), (20, 1.0, 0.1, {})]
    per = analysis._interval_means([(c, m, s) for c, m, s, _ in stream])
    assert [m for m, _, _ in per] == pytest.approx([1.0, 1.0, 1.0, 1.0])


def test_fault_rate_counts_every_class_but_healthy():
    stream = [(8, 0.0, 0.0, {"healthy": 6, "outer_race": 2}), (16, 0.0, 0.0, {"ball": 4, "cage": 4}),
              (16, 0.0, 0.0, {})]
    s = analysis.compute_series(_rows("pump-02", stream))["pump-02"]
    assert s.fault_rate[:2] == [0.25, 1.0] and np.isnan(s.fault_rate[2])


def test_bad_baseline_is_a_clear_error():
    with pytest.raises(analysis.AnalysisError, match="between 0 and 1"):
        analysis.compute_series([], baseline=1.5)


def test_missing_catalog_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        analysis.main(["--fleet-data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")])
    assert exc.value.code == 2
    assert "no Iceberg catalog" in capsys.readouterr().err


def test_reads_the_fleets_iceberg_tables_and_plots_per_device(tmp_path, monkeypatch):
    """A real pyiceberg SQL catalog with the fleet's own table schemas, written the way the sync writes."""
    pa = pytest.importorskip("pyarrow")
    from pyiceberg.catalog import load_catalog

    from fleet.analytics.iceberg import EVENTS_SCHEMA, TELEMETRY_SCHEMA
    from fleet.analytics.settings import AnalyticsSettings

    monkeypatch.delenv("EDGEKIT_ANALYTICS_CATALOG", raising=False)
    data_dir = tmp_path / "fleet"
    settings = AnalyticsSettings()
    catalog = load_catalog(settings.catalog_name, **settings.catalog_properties(data_dir))
    catalog.create_namespace_if_not_exists(settings.namespace)
    telemetry = catalog.create_table(f"{settings.namespace}.telemetry", schema=TELEMETRY_SCHEMA)
    catalog.create_table(f"{settings.namespace}.events", schema=EVENTS_SCHEMA)
    rng = np.random.default_rng(1)
    rows = []
    for device, shift in (("pump-01", 0.0), ("pump-02", 3.0)):
        chunks = [rng.normal(1.0, 0.2, 40) for _ in range(5)] + [rng.normal(1.0 + shift, 0.2, 40) for _ in range(5)]
        stream = [(c, m, s, {"healthy": 6, "inner_race": 2}) for c, m, s in _running(chunks)]
        rows += _rows(device, stream)
    table_rows = [{"id": i + 1, "device_id": r["device_id"], "seq": r["seq"], "ts": r["ts"], "received_at": r["ts"],
                   "replayed": False, "model_name": r["model_name"], "model_version": r["model_version"],
                   "requests": r["requests"], "errors": 0, "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
                   "p99_ms": 1.0, "cpu_percent": 10.0, "memory_mb": 100.0, "temperature_c": None,
                   "drift_json": r["drift_json"]} for i, r in enumerate(rows)]
    telemetry.append(pa.Table.from_pylist(table_rows, schema=telemetry.schema().as_arrow()))

    out = tmp_path / "plots"
    result = analysis.main(["--fleet-data", str(data_dir), "--out", str(out)])
    for name in ("pump-01.png", "pump-02.png", "fleet.png", "summary.json"):
        assert (out / name).stat().st_size > 1000 or name == "summary.json"
    assert (out / "pump-01.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = result["summary"]
    assert summary["pump-01"]["intervals"] == 10 and summary["pump-01"]["fault_rate_mean"] == pytest.approx(0.25)
    steady = summary["pump-01"]["drift"]["rms"]["after_mean_abs_z"]
    drifted = summary["pump-02"]["drift"]["rms"]["after_mean_abs_z"]
    assert drifted > 5 * max(steady, 0.5)
