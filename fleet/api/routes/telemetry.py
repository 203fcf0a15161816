"""Per-device telemetry time series (latency, errors, drift) and recent events, for charts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import defer

from fleet.api.deps import Ctx, Reader
from fleet.api.errors import NotFoundError
from fleet.api.series import bucketed_series, telemetry_point
from fleet.api.util import utc
from fleet.db.models import Device, Event, Telemetry

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])


def _known(ctx, device_id: str) -> None:
    with ctx.database.session() as s:
        if s.get(Device, device_id) is None:
            raise NotFoundError(f"no device {device_id!r}")


@router.get("/{device_id}", summary="A device's telemetry series, oldest first (latest `limit` points or buckets)")
def series(
    device_id: str, ctx: Ctx, _p: Reader,
    since: datetime | None = Query(None, description="ISO time; only points at or after it"),
    until: datetime | None = Query(None, description="ISO time; only points before it"),
    limit: int = Query(500, ge=1, le=10_000),
    bucket_s: float | None = Query(None, gt=0, le=7 * 86400,
                                   description="average into buckets of this many seconds (long windows)"),
) -> dict[str, Any]:
    _known(ctx, device_id)
    if bucket_s:
        bucket_s = float(max(1, int(bucket_s)))  # whole seconds: the database groups by them
        with ctx.database.session() as s:
            points = bucketed_series(s, device_id, int(bucket_s), since=since, until=until, limit=limit)
        return {"device_id": device_id, "count": len(points), "bucket_s": bucket_s, "points": points}
    q = select(Telemetry).options(defer(Telemetry.payload)).where(Telemetry.device_id == device_id)
    if since is not None:
        q = q.where(Telemetry.ts >= since)
    if until is not None:
        q = q.where(Telemetry.ts < until)
    q = q.order_by(Telemetry.ts.desc(), Telemetry.seq.desc()).limit(limit)
    with ctx.database.session() as s:
        points = [telemetry_point(t) for t in s.scalars(q)]
    points.reverse()
    return {"device_id": device_id, "count": len(points), "bucket_s": bucket_s, "points": points}


@router.get("/{device_id}/events", summary="A device's most recent events, newest first")
def events(device_id: str, ctx: Ctx, _p: Reader, limit: int = Query(100, ge=1, le=5000),
           kind: str | None = Query(None, description="only events of this kind prefix, e.g. ota.")) -> dict[str, Any]:
    _known(ctx, device_id)
    q = select(Event).where(Event.device_id == device_id)
    if kind:
        q = q.where(Event.kind.startswith(kind, autoescape=True))
    q = q.order_by(Event.ts.desc(), Event.seq.desc()).limit(limit)
    with ctx.database.session() as s:
        rows = [{"seq": e.seq, "ts": utc(e.ts), "kind": e.kind, "level": e.level, "message": e.message,
                 "rollout_id": e.rollout_id, "data": e.data or {}} for e in s.scalars(q)]
    return {"device_id": device_id, "count": len(rows), "events": rows}
