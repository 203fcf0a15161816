"""Telemetry rows as chart points, and their down-sampling into fixed time buckets (long windows)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Float, cast, func, literal_column, select, true
from sqlalchemy.orm import Session

from fleet.api.util import utc
from fleet.db.models import Telemetry

__all__ = ["bucketed_series", "bucketize", "telemetry_point"]

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


def bucketed_series(session: Session, device_id: str, bucket_s: int, *, since: datetime | None = None,
                    until: datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """:func:`bucketize` done by the database (GROUP BY time bucket), for windows of any length.

    Same point shape as :func:`bucketize`, newest ``limit`` buckets, oldest first; ``model`` is the
    bucket's highest ``name@version``. SQLite and PostgreSQL each get their own time and JSON functions.
    """
    b = max(1, int(bucket_s))
    pg = session.get_bind().dialect.name == "postgresql"
    bucket = literal_column(f"floor(extract(epoch from telemetry.ts) / {b})" if pg
                            else f"(CAST(strftime('%s', telemetry.ts) AS INTEGER) / {b})").label("bucket")

    def drift_field(name: str):
        if pg:
            return cast(Telemetry.drift.op("->>")(name), Float)
        return func.json_extract(Telemetry.drift, f"$.{name}")

    where = [Telemetry.device_id == device_id]
    if since is not None:
        where.append(Telemetry.ts >= since)
    if until is not None:
        where.append(Telemetry.ts < until)
    model = func.max(Telemetry.model_name + "@" + Telemetry.model_version)
    rows = session.execute(
        select(bucket, func.count(), func.max(Telemetry.seq), model, func.sum(Telemetry.requests),
               func.sum(Telemetry.errors), func.avg(Telemetry.p50_ms), func.avg(Telemetry.p95_ms),
               func.avg(Telemetry.p99_ms), func.avg(Telemetry.cpu_percent), func.avg(Telemetry.memory_mb),
               func.avg(Telemetry.temperature_c), func.avg(drift_field("confidence_mean")),
               func.avg(drift_field("confidence_p10")))
        .where(*where).group_by(bucket).order_by(bucket.desc()).limit(limit)
    ).all()
    if not rows:
        return []
    first = min(int(r[0]) for r in rows)
    points: dict[int, dict[str, Any]] = {}
    for (k, n, seq, mdl, req, err, p50, p95, p99, cpu, mem, temp, conf, conf10) in rows:
        req, err = int(req or 0), int(err or 0)
        points[int(k)] = {
            "ts": datetime.fromtimestamp(int(k) * b, tz=timezone.utc), "samples": n, "seq": seq, "model": mdl,
            "requests": req, "errors": err, "error_rate": err / req if req else None, "inputs": {},
            "predictions": {}, "p50_ms": _f(p50), "p95_ms": _f(p95), "p99_ms": _f(p99), "cpu_percent": _f(cpu),
            "memory_mb": _f(mem), "temperature_c": _f(temp), "confidence_mean": _f(conf),
            "confidence_p10": _f(conf10),
        }
    where.append(bucket >= first)  # only the buckets kept above
    for key, name, mean, std in session.execute(_json_members(pg, "inputs", bucket, where, "stats")):
        if int(key) in points:
            points[int(key)]["inputs"][name] = {"mean": _f(mean), "std": _f(std)}
    for key, label, count in session.execute(_json_members(pg, "predictions", bucket, where, "counts")):
        if int(key) in points:
            points[int(key)]["predictions"][label] = int(count or 0)
    return [points[k] for k in sorted(points)]


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _json_members(pg: bool, field: str, bucket, where: list, what: str):
    """Per bucket and key of the JSON object ``drift.<field>``: mean/std of its members (``stats``)
    or the sum of its values (``counts``)."""
    if pg:
        members = func.json_each(Telemetry.drift.op("->")(field)).table_valued("key", "value").alias("m")
        if what == "stats":
            aggs = (func.avg(cast(members.c.value.op("->>")("mean"), Float)),
                    func.avg(cast(members.c.value.op("->>")("std"), Float)))
        else:
            aggs = (func.sum(cast(members.c.value.op("#>>")(literal_column("'{}'")), Float)),)
    else:
        members = func.json_each(Telemetry.drift, f"$.{field}").table_valued("key", "value").alias("m")
        if what == "stats":
            aggs = (func.avg(func.json_extract(members.c.value, "$.mean")),
                    func.avg(func.json_extract(members.c.value, "$.std")))
        else:
            aggs = (func.sum(members.c.value),)
    return (select(bucket, members.c.key, *aggs).select_from(Telemetry).join(members, true())
            .where(*where).group_by(bucket, members.c.key))
