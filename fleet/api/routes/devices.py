"""Devices: list (selector filter), overview counts, detail, and tag/group edits (admin, audited)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import exists, func, literal, select

from fleet.api.deps import Admin, Ctx, Reader
from fleet.api.errors import NotFoundError
from fleet.api.util import utc
from fleet.audit import record
from fleet.db.models import Device
from fleet.selectors import parse_selector

__all__ = ["DeviceOut", "DeviceUpdate", "router"]

router = APIRouter(prefix="/api/v1", tags=["devices"])

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class ModelVersion(BaseModel):
    name: str
    version: str


class DeviceOut(BaseModel):
    """One device as the API shows it."""

    id: str
    profile: str | None
    tags: list[str]
    group: str | None
    online: bool
    first_seen: datetime | None
    last_seen: datetime | None
    agent_version: str | None
    active: ModelVersion | None
    previous: ModelVersion | None
    desired: ModelVersion | None
    desired_rollout_id: str | None
    ota_state: str | None
    golden_passed: bool | None
    last_error: str | None
    reported_at: datetime | None

    @classmethod
    def from_row(cls, d: Device) -> DeviceOut:
        def mv(name: str | None, version: str | None) -> ModelVersion | None:
            return ModelVersion(name=name, version=version) if name and version else None

        return cls(
            id=d.id, profile=d.profile, tags=list(d.tags or []), group=d.group, online=bool(d.online),
            first_seen=utc(d.first_seen), last_seen=utc(d.last_seen), agent_version=d.agent_version,
            active=mv(d.active_name, d.active_version), previous=mv(d.previous_name, d.previous_version),
            desired=mv(d.desired_name, d.desired_version), desired_rollout_id=d.desired_rollout_id,
            ota_state=d.ota_state, golden_passed=d.golden_passed, last_error=d.last_error,
            reported_at=utc(d.reported_at),
        )


class DeviceUpdate(BaseModel):
    """A tag/group edit: ``tags`` replaces the set; ``add_tags``/``remove_tags`` edit it; ``group`` ("" clears)."""

    model_config = ConfigDict(extra="forbid")

    tags: list[str] | None = Field(default=None, max_length=64)
    add_tags: list[str] = Field(default_factory=list, max_length=64)
    remove_tags: list[str] = Field(default_factory=list, max_length=64)
    group: str | None = None

    @field_validator("tags", "add_tags", "remove_tags")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        for t in v or []:
            if not _LABEL.match(t):
                raise ValueError(f"tag {t!r} must be 1-64 of letters, digits, '_', '.', ':' or '-'")
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v not in (None, "") and not _LABEL.match(v):
            raise ValueError(f"group {v!r} must be 1-64 of letters, digits, '_', '.', ':' or '-'")
        return v


def _get(session, device_id: str) -> Device:
    d = session.get(Device, device_id)
    if d is None:
        raise NotFoundError(f"no device {device_id!r}")
    return d


@router.get("/devices", response_model=list[DeviceOut], summary="Devices, filtered by a selector")
def list_devices(
    ctx: Ctx, _p: Reader, response: Response,
    selector: str = Query("all", description="e.g. tag=line-3,profile=raspberry-pi-5 or id=a,b"),
    online: bool | None = Query(None, description="only online (true) or offline (false) devices"),
    limit: int = Query(500, ge=1, le=5000), offset: int = Query(0, ge=0),
) -> list[DeviceOut]:
    sel = parse_selector(selector)
    conds = []
    if "id" in sel.clauses:
        conds.append(Device.id.in_(sel.clauses["id"]))
    if "group" in sel.clauses:
        conds.append(Device.group.in_(sel.clauses["group"]))
    if "profile" in sel.clauses:
        conds.append(Device.profile.in_(sel.clauses["profile"]))
    if online is not None:
        conds.append(Device.online.is_(online))
    with ctx.database.session() as s:
        if "tag" in sel.clauses:
            conds.append(_has_any_tag(s.get_bind().dialect.name, sel.clauses["tag"]))
        total = s.scalar(select(func.count()).select_from(Device).where(*conds)) or 0
        rows = s.scalars(select(Device).where(*conds).order_by(Device.id).offset(offset).limit(limit)).all()
        out = [DeviceOut.from_row(d) for d in rows if sel.matches(d)]  # the selector has the last word
    response.headers["X-Total-Count"] = str(total)
    return out


def _has_any_tag(dialect: str, tags: frozenset[str]):
    """SQL for "the device's JSON tag list holds one of ``tags``" (SQLite ``json_each``, PostgreSQL
    ``json_array_elements_text``), so filtering and paging happen in the database."""
    fn = func.json_each if dialect == "sqlite" else func.json_array_elements_text
    elems = fn(Device.tags).table_valued("value").alias("device_tag")
    return exists(select(literal(1)).select_from(elems).where(elems.c.value.in_(sorted(tags))))


@router.get("/overview", summary="Fleet overview: online/offline, versions, profiles, groups, OTA states")
def overview(ctx: Ctx, _p: Reader) -> dict[str, Any]:
    def counts(s, col) -> dict[str, int]:
        return {("none" if k is None else str(k)): n for k, n in s.execute(select(col, func.count()).group_by(col))}

    with ctx.database.session() as s:
        total = s.scalar(select(func.count()).select_from(Device)) or 0
        online = s.scalar(select(func.count()).select_from(Device).where(Device.online.is_(True))) or 0
        versions: dict[str, int] = {}
        for name, version, n in s.execute(
            select(Device.active_name, Device.active_version, func.count()).group_by(Device.active_name,
                                                                                      Device.active_version)
        ):
            key = f"{name}@{version}" if name and version else "none"
            versions[key] = versions.get(key, 0) + n
        return {"devices": total, "online": online, "offline": total - online, "versions": versions,
                "profiles": counts(s, Device.profile), "groups": counts(s, Device.group),
                "ota_states": counts(s, Device.ota_state)}


@router.get("/devices/{device_id}", response_model=DeviceOut, summary="One device")
def get_device(device_id: str, ctx: Ctx, _p: Reader) -> DeviceOut:
    with ctx.database.session() as s:
        return DeviceOut.from_row(_get(s, device_id))


@router.patch("/devices/{device_id}", response_model=DeviceOut, summary="Edit a device's tags or group (admin)")
def update_device(device_id: str, body: DeviceUpdate, ctx: Ctx, principal: Admin) -> DeviceOut:
    with ctx.database.session() as s:
        d = _get(s, device_id)
        before = {"tags": list(d.tags or []), "group": d.group}
        tags = list(body.tags) if body.tags is not None else list(d.tags or [])
        tags += [t for t in body.add_tags if t not in tags]
        tags = [t for t in dict.fromkeys(tags) if t not in set(body.remove_tags)]
        d.tags = tags
        if body.group is not None:
            d.group = body.group or None
        after = {"tags": tags, "group": d.group}
        record(s, principal.actor, "device.update", f"device:{device_id}", {"before": before, "after": after})
        return DeviceOut.from_row(d)
