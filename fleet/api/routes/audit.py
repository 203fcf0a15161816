"""The audit log: list entries (newest first) and verify the hash chain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from fleet.api.deps import Ctx, Reader
from fleet.api.util import utc
from fleet.audit import verify_chain
from fleet.db.web_models import AuditEntry

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", summary="Audit entries, newest first")
def list_entries(
    ctx: Ctx, _p: Reader, limit: int = Query(100, ge=1, le=5000),
    before_seq: int | None = Query(None, ge=1, description="page: entries older than this seq"),
    action: str | None = Query(None, description="only this action prefix, e.g. rollout."),
    target: str | None = Query(None, description="only this target prefix, e.g. device:cam-1"),
    actor: str | None = Query(None, description="only this actor prefix, e.g. token:ci"),
) -> dict[str, Any]:
    q = select(AuditEntry)
    if target:
        q = q.where(AuditEntry.target.startswith(target, autoescape=True))
    if actor:
        q = q.where(AuditEntry.actor.startswith(actor, autoescape=True))
    if before_seq is not None:
        q = q.where(AuditEntry.seq < before_seq)
    if action:
        q = q.where(AuditEntry.action.startswith(action, autoescape=True))
    q = q.order_by(AuditEntry.seq.desc()).limit(limit)
    with ctx.database.session() as s:
        rows = [{"seq": e.seq, "ts": utc(e.ts), "actor": e.actor, "action": e.action, "target": e.target,
                 "details": e.details or {}, "prev_hash": e.prev_hash, "hash": e.hash} for e in s.scalars(q)]
    return {"count": len(rows), "entries": rows}


@router.get("/verify", summary="Recompute the hash chain; names the first edited, deleted or reordered entry")
def verify(ctx: Ctx, _p: Reader,
           head_seq: int | None = Query(None, ge=0, description="a previously noted head seq (truncation check)"),
           head_hash: str | None = Query(None, pattern=r"^[0-9a-f]{64}$")) -> dict[str, Any]:
    expected = (head_seq, head_hash) if head_seq is not None and head_hash is not None else None
    with ctx.database.session() as s:
        return verify_chain(s, expected_head=expected).as_dict()
