"""Rollouts: create, list, status (waves and gate results), members, pause, resume, abort (admin, audited).

The routes only call :class:`~fleet.rollouts.manager.RolloutManager`; the fleet's ticker advances the
state machine. Illegal transitions are 409, a bad definition 422, an unknown rollout 404.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from edgekit.errors import ConfigError, FleetError, RolloutError
from fleet.api.deps import Admin, Ctx, Reader
from fleet.api.errors import NotFoundError
from fleet.api.series import rollout_series
from fleet.api.util import utc
from fleet.audit import record
from fleet.db.models import Event, RolloutDevice
from fleet.rollouts import RolloutSpec, RolloutStatus

__all__ = ["RolloutCreate", "router"]

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


class RolloutCreate(BaseModel):
    """A rollout request; durations accept ``300s``/``5m``/``1h`` or seconds."""

    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(description="NAME@VERSION of a registered bundle", examples=["tiny@1.0.0"])
    selector: str = Field(default="all", examples=["tag=line-3,profile=raspberry-pi-5"])
    waves: str | list[float] = Field(default="1,10,50,100", description="cumulative percentages ending at 100")
    soak_s: str | float = Field(default=300.0, description="soak per wave, e.g. 300s")
    max_failure_rate: float | None = None
    max_p95_regression: float | None = None
    max_confidence_drop: float | None = None
    install_timeout_s: str | float | None = None


class AbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="aborted by operator", max_length=500)


def _status(ctx, rollout_id: str) -> RolloutStatus:
    try:
        return ctx.rollouts.status(rollout_id)
    except RolloutError as exc:
        raise NotFoundError(str(exc)) from exc


@router.get("", response_model=list[RolloutStatus], summary="Rollouts, newest first")
def list_rollouts(ctx: Ctx, _p: Reader, state: str | None = Query(None), limit: int = Query(100, ge=1, le=1000)):
    return ctx.rollouts.list(state=state, limit=limit)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RolloutStatus,
             summary="Create a rollout (admin); the ticker starts wave 1")
def create_rollout(body: RolloutCreate, ctx: Ctx, principal: Admin) -> RolloutStatus:
    fields = body.model_dump(exclude_none=True)
    try:
        spec = RolloutSpec.build(**fields)
        st = ctx.rollouts.create(spec, created_by=principal.actor)
    except (RolloutError, ConfigError) as exc:
        code = 409 if "another running or paused rollout" in str(exc) else 422
        raise HTTPException(code, str(exc)) from exc
    except FleetError as exc:  # e.g. a malformed NAME@VERSION
        raise HTTPException(422, str(exc)) from exc
    with ctx.database.session() as s:
        record(s, principal.actor, "rollout.create", f"rollout:{st.id}",
               {"bundle": st.bundle, "selector": st.selector, "waves": [w.percent for w in st.waves],
                "devices": sum(w.devices for w in st.waves), "soak_s": st.soak_s,
                "max_failure_rate": st.max_failure_rate, "max_p95_regression": st.max_p95_regression})
    return st


@router.get("/{rollout_id}", response_model=RolloutStatus, summary="Status: waves, counts and gate results")
def rollout_status(rollout_id: str, ctx: Ctx, _p: Reader) -> RolloutStatus:
    return _status(ctx, rollout_id)


@router.get("/{rollout_id}/devices", summary="The rollout's devices: wave, state, error")
def rollout_devices(rollout_id: str, ctx: Ctx, _p: Reader) -> dict[str, Any]:
    _status(ctx, rollout_id)
    with ctx.database.session() as s:
        rows = s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
                         .order_by(RolloutDevice.wave, RolloutDevice.device_id))
        devices = [{"device_id": m.device_id, "wave": m.wave, "state": m.state,
                    "previous": f"{m.previous_name}@{m.previous_version}" if m.previous_name else None,
                    "desired_at": utc(m.desired_at), "installed_at": utc(m.installed_at), "error": m.error}
                   for m in rows]
    return {"rollout_id": rollout_id, "count": len(devices), "devices": devices}


@router.get("/{rollout_id}/events", summary="Device events tagged with this rollout (OTA steps, failures), newest first")
def rollout_events(rollout_id: str, ctx: Ctx, _p: Reader, limit: int = Query(200, ge=1, le=5000),
                   level: str | None = Query(None, pattern="^(debug|info|warning|error)$",
                                             description="only this level")) -> dict[str, Any]:
    _status(ctx, rollout_id)
    q = select(Event).where(Event.rollout_id == rollout_id)
    if level:
        q = q.where(Event.level == level)
    with ctx.database.session() as s:
        rows = [{"device_id": e.device_id, "seq": e.seq, "ts": utc(e.ts), "kind": e.kind, "level": e.level,
                 "message": e.message, "data": e.data or {}}
                for e in s.scalars(q.order_by(Event.ts.desc(), Event.id.desc()).limit(limit))]
    return {"rollout_id": rollout_id, "count": len(rows), "events": rows}


@router.get("/{rollout_id}/telemetry",
            summary="Per wave and model version: p95 latency, error rate and confidence over time, for charts")
def rollout_telemetry(rollout_id: str, ctx: Ctx, _p: Reader,
                      bucket_s: float = Query(60.0, ge=1, le=86_400),
                      baseline_s: float = Query(3600.0, ge=0, le=7 * 86_400,
                                                description="how far before the rollout to show")) -> dict[str, Any]:
    st = _status(ctx, rollout_id)
    b = int(bucket_s)
    since = st.created_at - timedelta(seconds=baseline_s)
    until = st.finished_at + timedelta(seconds=b) if st.finished_at is not None else None
    with ctx.database.session() as s:
        by_wave = rollout_series(s, rollout_id, b, since=since, until=until)
    waves = [{"index": w, "series": dict(sorted(series.items()))} for w, series in sorted(by_wave.items())]
    return {"rollout_id": rollout_id, "bundle": st.bundle, "bucket_s": float(b), "waves": waves}


def _command(ctx, principal, rollout_id: str, verb: str, details: dict[str, Any] | None = None) -> RolloutStatus:
    before = _status(ctx, rollout_id)
    try:
        if verb == "abort":
            st = ctx.rollouts.abort(rollout_id, (details or {}).get("reason", "aborted by operator"))
        else:
            st = getattr(ctx.rollouts, verb)(rollout_id)
    except RolloutError as exc:
        raise HTTPException(409, str(exc)) from exc
    with ctx.database.session() as s:
        record(s, principal.actor, f"rollout.{verb}", f"rollout:{rollout_id}",
               {"from": before.state, "to": st.state, **(details or {})})
    return st


@router.post("/{rollout_id}/pause", response_model=RolloutStatus, summary="Pause (admin)")
def pause(rollout_id: str, ctx: Ctx, principal: Admin) -> RolloutStatus:
    return _command(ctx, principal, rollout_id, "pause")


@router.post("/{rollout_id}/resume", response_model=RolloutStatus, summary="Resume (admin)")
def resume(rollout_id: str, ctx: Ctx, principal: Admin) -> RolloutStatus:
    return _command(ctx, principal, rollout_id, "resume")


@router.post("/{rollout_id}/abort", response_model=RolloutStatus,
             summary="Abort for good; the wave in flight is rolled back (admin)")
def abort(rollout_id: str, ctx: Ctx, principal: Admin, body: AbortRequest | None = None) -> RolloutStatus:
    return _command(ctx, principal, rollout_id, "abort", {"reason": (body or AbortRequest()).reason})
