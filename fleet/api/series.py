"""Telemetry rows as chart points, and their down-sampling into fixed time buckets (long windows)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from fleet.api.util import utc
from fleet.db.models import Telemetry

__all__ = ["bucketize", "telemetry_point"]

_MEAN_KEYS = ("p50_ms", "p95_ms", "p99_ms", "cpu_percent", "memory_mb", "temperature_c", "confidence_mean",
              "confidence_p10")


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def telemetry_point(t: Telemetry) -> dict[str, Any]:
    """One stored telemetry row as a chart point (aware ``ts``; drift flattened)."""
    drift = t.drift or {}
    inputs = {k: {"mean": v.get("mean"), "std": v.get("std")} for k, v in (drift.get("inputs") or {}).items()
              if isinstance(v, dict)}
    return {
        "seq": t.seq, "ts": utc(t.ts), "model": f"{t.model_name}@{t.model_version}" if t.model_name else None,
        "requests": t.requests, "errors": t.errors,
        "error_rate": (t.errors / t.requests) if t.requests else None,
        "p50_ms": t.p50_ms, "p95_ms": t.p95_ms, "p99_ms": t.p99_ms,
        "cpu_percent": t.cpu_percent, "memory_mb": t.memory_mb, "temperature_c": t.temperature_c,
        "confidence_mean": drift.get("confidence_mean"), "confidence_p10": drift.get("confidence_p10"),
        "inputs": inputs, "predictions": drift.get("predictions") or {},
    }


def bucketize(points: list[dict[str, Any]], bucket_s: float) -> list[dict[str, Any]]:
    """Group ``points`` (oldest first, each with an aware ``ts``) into ``bucket_s``-second buckets.

    Latencies, resources and confidence are averaged; requests and errors are summed (so the error
    rate is errors/requests over the bucket); input statistics are averaged per input; ``model`` and
    ``seq`` are the bucket's last. A bucket's ``ts`` is its start; ``samples`` counts its points.
    """
    buckets: dict[int, list[dict[str, Any]]] = {}
    for p in points:
        key = int(p["ts"].timestamp() // bucket_s)
        buckets.setdefault(key, []).append(p)
    out = []
    for key in sorted(buckets):
        group = buckets[key]
        requests = sum(p["requests"] or 0 for p in group)
        errors = sum(p["errors"] or 0 for p in group)
        names = {n for p in group for n in (p.get("inputs") or {})}
        inputs = {n: {"mean": _mean(p["inputs"][n].get("mean") for p in group if n in (p.get("inputs") or {})),
                      "std": _mean(p["inputs"][n].get("std") for p in group if n in (p.get("inputs") or {}))}
                  for n in sorted(names)}
        predictions: dict[str, int] = {}
        for p in group:
            for label, n in (p.get("predictions") or {}).items():
                predictions[label] = predictions.get(label, 0) + int(n)
        point = {
            "ts": datetime.fromtimestamp(key * bucket_s, tz=timezone.utc), "samples": len(group),
            "seq": group[-1]["seq"], "model": group[-1]["model"], "requests": requests, "errors": errors,
            "error_rate": errors / requests if requests else None, "inputs": inputs, "predictions": predictions,
        }
        point.update({k: _mean(p.get(k) for p in group) for k in _MEAN_KEYS})
        out.append(point)
    return out
