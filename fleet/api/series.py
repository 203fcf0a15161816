"""Telemetry as chart points: raw rows, and per-time-bucket aggregates computed by the database."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import partial
from typing import Any

from sqlalchemy import Float, cast, func, literal_column, select, true
from sqlalchemy.orm import Session

from fleet.api.util import utc
from fleet.db.models import RolloutDevice, Telemetry

__all__ = ["bucketed_series", "rollout_series", "telemetry_point"]


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


def bucketed_series(session: Session, device_id: str, bucket_s: int, *, since: datetime | None = None,
                    until: datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """A device's telemetry averaged per ``bucket_s`` time bucket by the database, for windows of any
    length: latencies, resources and confidence averaged, requests and errors summed (so ``error_rate``
    is over the bucket), input statistics averaged per input, prediction counts summed; ``ts`` is the
    bucket's start, ``samples`` its row count, ``seq`` its last, ``model`` its highest ``name@version``.
    Newest ``limit`` buckets, oldest first. SQLite and PostgreSQL each get their own time/JSON functions.
    """
    b = max(1, int(bucket_s))
    pg = session.get_bind().dialect.name == "postgresql"
    bucket = _bucket(pg, b)
    drift_field = partial(_drift_field, pg)

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


def _bucket(pg: bool, b: int):
    """Telemetry's time bucket number (epoch seconds // ``b``); ``b`` is a validated int, not user text."""
    return literal_column(f"floor(extract(epoch from telemetry.ts) / {int(b)})" if pg
                          else f"(CAST(strftime('%s', telemetry.ts) AS INTEGER) / {int(b)})").label("bucket")


def _drift_field(pg: bool, name: str):
    if pg:
        return cast(Telemetry.drift.op("->>")(name), Float)
    return func.json_extract(Telemetry.drift, f"$.{name}")


def rollout_series(session: Session, rollout_id: str, bucket_s: int, *, since: datetime,
                   until: datetime | None = None) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Per wave and ``name@version``: the wave's devices' telemetry averaged per time bucket, computed by
    the database (``{wave: {model: [points oldest first]}}``; points carry ts, samples, p50/p95/p99,
    error_rate, confidence_mean, requests)."""
    b = max(1, int(bucket_s))
    pg = session.get_bind().dialect.name == "postgresql"
    bucket = _bucket(pg, b)
    model = (func.coalesce(Telemetry.model_name, "unknown") + "@" + func.coalesce(Telemetry.model_version, "?"))
    where = [RolloutDevice.rollout_id == rollout_id, Telemetry.ts >= since]
    if until is not None:
        where.append(Telemetry.ts <= until)
    rows = session.execute(
        select(RolloutDevice.wave, model.label("model"), bucket, func.count(), func.avg(Telemetry.p50_ms),
               func.avg(Telemetry.p95_ms), func.avg(Telemetry.p99_ms), func.sum(Telemetry.requests),
               func.sum(Telemetry.errors), func.avg(_drift_field(pg, "confidence_mean")))
        .select_from(Telemetry).join(RolloutDevice, RolloutDevice.device_id == Telemetry.device_id)
        .where(*where).group_by(RolloutDevice.wave, model, bucket).order_by(RolloutDevice.wave, model, bucket)
    ).all()
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for wave, mdl, k, n, p50, p95, p99, req, err, conf in rows:
        req, err = int(req or 0), int(err or 0)
        out.setdefault(int(wave), {}).setdefault(mdl, []).append({
            "ts": datetime.fromtimestamp(int(k) * b, tz=timezone.utc), "samples": n, "p50_ms": _f(p50),
            "p95_ms": _f(p95), "p99_ms": _f(p99), "error_rate": err / req if req else None,
            "confidence_mean": _f(conf), "requests": req,
        })
    return out


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
