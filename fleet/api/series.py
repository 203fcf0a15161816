"""Down-sampling of a device's telemetry points into fixed time buckets (for charts over long windows)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

__all__ = ["bucketize"]

_MEAN_KEYS = ("p50_ms", "p95_ms", "p99_ms", "cpu_percent", "memory_mb", "temperature_c", "confidence_mean",
              "confidence_p10")


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


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
