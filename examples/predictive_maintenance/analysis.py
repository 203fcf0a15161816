"""What an analytics team does with the synced data: read the fleet's Iceberg tables and plot, per device,
inference latency, the predicted fault rate and input drift.

    python -m examples.predictive_maintenance.analysis --fleet-data demo-out/pdm/fleet --out demo-out/pdm/analysis

The fleet manager copies its ``telemetry`` and ``events`` tables into Apache Iceberg (``fleet.analytics``:
by default a SQL catalog on SQLite with a local warehouse under ``{fleet data dir}/analytics``; a REST
catalog on an object store is configuration, ``EDGEKIT_ANALYTICS_CATALOG``). This script opens the same
catalog with pyiceberg, read-only, and writes ``DEVICE.png`` per device, ``fleet.png`` and ``summary.json``.

Drift: each telemetry message carries, per model input, the running count/mean/std since the model was
loaded. The mean over one interval is recovered from two consecutive running means
(``(c₂·m₂ − c₁·m₁) / (c₂ − c₁)``) and shown as a z-score against the device's own baseline — the running
statistics at the end of the first ``--baseline`` fraction of its intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DeviceSeries", "compute_series", "load_tables", "main", "plot_device", "plot_fleet", "summarize"]

#: the predicted label that is not a fault
HEALTHY = "healthy"


class AnalysisError(Exception):
    """The tables cannot be read or hold nothing to analyse (one clear line for the user)."""


@dataclass
class DeviceSeries:
    """One device's telemetry as aligned time series (one point per telemetry interval)."""

    device_id: str
    ts: list[datetime] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p95_ms: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    fault_rate: list[float] = field(default_factory=list)
    #: input name → per-interval z-score against the baseline (NaN where the interval had no data)
    drift_z: dict[str, list[float]] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)


def load_tables(fleet_data: Path, *, namespace: str | None = None) -> tuple[list[dict], list[dict]]:
    """Rows of the Iceberg ``telemetry`` and ``events`` tables (as dicts), via the fleet's catalog settings."""
    try:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        from fleet.analytics.settings import load_analytics_settings
    except ImportError as exc:
        raise AnalysisError(f"reading the analytics tables needs pyiceberg (pip install 'edgekit[fleet]'): {exc}") from exc
    settings = load_analytics_settings(namespace=namespace)
    if not settings.catalog and not (Path(fleet_data) / "analytics" / "catalog.db").is_file():
        raise AnalysisError(f"no Iceberg catalog under {Path(fleet_data) / 'analytics'}: has the fleet synced yet?")
    props = settings.catalog_properties(Path(fleet_data))
    try:
        catalog = load_catalog(settings.catalog_name, **props)
        out = []
        for name in ("telemetry", "events"):
            try:
                table = catalog.load_table(f"{settings.namespace}.{name}")
            except (NoSuchTableError, NoSuchNamespaceError):
                out.append([])
                continue
            out.append(table.scan().to_arrow().to_pylist())
    except AnalysisError:
        raise
    except Exception as exc:  # pyiceberg raises many types for an unreadable catalog or warehouse
        raise AnalysisError(f"cannot read the Iceberg tables ({props.get('uri', settings.catalog_name)}): "
                            f"{type(exc).__name__}: {exc}") from exc
    return out[0], out[1]


def _interval_means(points: list[tuple[int, float, float]]) -> list[tuple[float, float, float]]:
    """Running (count, mean, std) → per-interval (mean, running mean, running std); NaN mean if no new data."""
    out, prev_c, prev_m = [], 0, 0.0
    for c, m, s in points:
        if c < prev_c:  # the agent started over (new model or restart): the stats restart too
            prev_c, prev_m = 0, 0.0
        n = c - prev_c
        out.append(((c * m - prev_c * prev_m) / n if n > 0 else float("nan"), m, s))
        prev_c, prev_m = c, m
    return out


def compute_series(telemetry: list[dict], *, baseline: float = 0.3) -> dict[str, DeviceSeries]:
    """Per-device series from telemetry rows (``drift_json`` as the agent reported it)."""
    if not 0 < baseline < 1:
        raise AnalysisError(f"--baseline must be between 0 and 1, got {baseline}")
    by_device: dict[str, list[dict]] = {}
    for row in telemetry:
        by_device.setdefault(row["device_id"], []).append(row)
    series: dict[str, DeviceSeries] = {}
    for device_id, rows in sorted(by_device.items()):
        rows.sort(key=lambda r: (r["ts"], r["seq"]))
        s = DeviceSeries(device_id)
        stats: dict[str, list[tuple[int, float, float]]] = {}
        for r in rows:
            try:
                drift = json.loads(r.get("drift_json") or "{}") or {}
            except json.JSONDecodeError:
                drift = {}
            preds = {str(k): int(v) for k, v in (drift.get("predictions") or {}).items()}
            total = sum(preds.values())
            s.ts.append(r["ts"])
            s.p50_ms.append(float("nan") if r.get("p50_ms") is None else float(r["p50_ms"]))
            s.p95_ms.append(float("nan") if r.get("p95_ms") is None else float(r["p95_ms"]))
            s.requests.append(int(r.get("requests") or 0))
            s.fault_rate.append((total - preds.get(HEALTHY, 0)) / total if total else float("nan"))
            s.models.append(f"{r.get('model_name')}@{r.get('model_version')}" if r.get("model_name") else "-")
            for name, st in (drift.get("inputs") or {}).items():
                stats.setdefault(name, [(0, 0.0, 0.0)] * (len(s.ts) - 1))
                stats[name].append((int(st.get("count", 0)), float(st.get("mean", 0.0)), float(st.get("std", 0.0))))
            for name in stats:
                if len(stats[name]) < len(s.ts):
                    stats[name].append(stats[name][-1] if stats[name] else (0, 0.0, 0.0))
        for name, points in stats.items():
            per = _interval_means(points)
            with_data = [i for i, (m, _, _) in enumerate(per) if np.isfinite(m)]
            if len(with_data) < 2:
                s.drift_z[name] = [float("nan")] * len(per)
                continue
            ref = with_data[max(0, int(round(len(with_data) * baseline)) - 1)]
            _, ref_mean, ref_std = per[ref]
            # the std of one interval's mean is ≈ the per-value std; a zero std (constant input) → no scale
            scale = ref_std if ref_std > 1e-12 else max(abs(ref_mean), 1e-12)
            s.drift_z[name] = [(m - ref_mean) / scale if np.isfinite(m) else float("nan") for m, _, _ in per]
        series[device_id] = s
    return series


def _nanmean(values: list[float]) -> float | None:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def summarize(series: dict[str, DeviceSeries], events: list[dict], *, baseline: float = 0.3) -> dict[str, Any]:
    """Per device: intervals, requests, latency, fault rate, and mean |drift z| before/after the baseline."""
    out: dict[str, Any] = {}
    for device_id, s in series.items():
        cut = max(1, int(round(len(s.ts) * baseline)))
        drift = {}
        for name, z in s.drift_z.items():
            drift[name] = {"baseline_mean_abs_z": _nanmean([abs(v) for v in z[:cut]]),
                           "after_mean_abs_z": _nanmean([abs(v) for v in z[cut:]])}
        kinds: dict[str, int] = {}
        for e in events:
            if e["device_id"] == device_id:
                kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        out[device_id] = {
            "intervals": len(s.ts), "requests": int(sum(s.requests)),
            "p50_ms_mean": _nanmean(s.p50_ms), "p95_ms_mean": _nanmean(s.p95_ms),
            "fault_rate_mean": _nanmean(s.fault_rate), "models": sorted(set(s.models) - {"-"}),
            "drift": drift, "events": kinds,
        }
    return out


def plot_device(s: DeviceSeries, path: Path) -> Path:
    """Three panels over time: latency p50/p95, predicted fault rate, drift z-score per input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    t = s.ts
    axes[0].plot(t, s.p50_ms, label="p50", marker=".")
    axes[0].plot(t, s.p95_ms, label="p95", marker=".")
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend(loc="upper left")
    axes[1].plot(t, s.fault_rate, color="tab:red", marker=".")
    axes[1].set_ylabel("predicted fault rate")
    axes[1].set_ylim(-0.05, 1.05)
    for name, z in sorted(s.drift_z.items()):
        axes[2].plot(t, z, label=name, marker=".")
    axes[2].axhline(0, color="grey", lw=0.5)
    axes[2].set_ylabel("drift (z vs baseline)")
    if s.drift_z:
        axes[2].legend(loc="upper left", fontsize="small", ncol=4)
    axes[2].set_xlabel("time (UTC)")
    fig.suptitle(f"{s.device_id}: latency, fault rate and input drift")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_fleet(summary: dict[str, Any], path: Path) -> Path:
    """Bars per device: mean p95 latency, mean fault rate, and the largest mean |drift z| after the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted(summary)
    p95 = [summary[d]["p95_ms_mean"] or 0.0 for d in devices]
    faults = [summary[d]["fault_rate_mean"] or 0.0 for d in devices]
    drift = [max([v["after_mean_abs_z"] or 0.0 for v in summary[d]["drift"].values()] or [0.0]) for d in devices]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, values, title, color in ((axes[0], p95, "mean p95 latency (ms)", "tab:blue"),
                                     (axes[1], faults, "mean predicted fault rate", "tab:red"),
                                     (axes[2], drift, "largest input drift |z| after baseline", "tab:purple")):
        ax.bar(devices, values, color=color)
        ax.set_title(title, fontsize="medium")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet-data", type=Path, default=Path("demo-out/pdm/fleet"), help="the fleet's data dir")
    ap.add_argument("--out", type=Path, default=Path("demo-out/pdm/analysis"), help="where the PNGs go")
    ap.add_argument("--baseline", type=float, default=0.3, help="fraction of each device's intervals used as baseline")
    ap.add_argument("--namespace", default=None, help="Iceberg namespace (default: the fleet's, 'edgekit')")
    args = ap.parse_args(argv)
    try:
        telemetry, events = load_tables(args.fleet_data, namespace=args.namespace)
        if not telemetry:
            raise AnalysisError("the telemetry table is empty: no device has reported yet, or the fleet has not synced")
        series = compute_series(telemetry, baseline=args.baseline)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    args.out.mkdir(parents=True, exist_ok=True)
    summary = summarize(series, events, baseline=args.baseline)
    plots = [str(plot_device(s, args.out / f"{d}.png")) for d, s in series.items()]
    plots.append(str(plot_fleet(summary, args.out / "fleet.png")))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(telemetry)} telemetry rows, {len(events)} events from {len(series)} device(s)")
    for d, info in summary.items():
        worst = max(info["drift"].items(), key=lambda kv: kv[1]["after_mean_abs_z"] or 0.0, default=(None, None))
        drift_txt = f", strongest drift {worst[0]} |z| {worst[1]['after_mean_abs_z']:.1f}" if worst[0] and worst[1]["after_mean_abs_z"] is not None else ""
        fr = info["fault_rate_mean"]
        p95 = info["p95_ms_mean"]
        print(f"  {d}: {info['intervals']} intervals, {info['requests']} requests, "
              f"p95 {'-' if p95 is None else f'{p95:.2f} ms'}, fault rate {'-' if fr is None else f'{fr:.2f}'}{drift_txt}")
    print(f"plots: {', '.join(plots)}")
    return {"summary": summary, "plots": plots}


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
