"""``GET /healthz``: liveness and readiness of the fleet manager (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from fleet.api.deps import Ctx
from fleet.api.util import as_plain

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness/readiness: database reachable, ingest counters")
def healthz(ctx: Ctx, request: Request) -> JSONResponse:
    try:
        with ctx.database.session() as s:
            s.execute(text("SELECT 1"))
        db_ok, db_error = True, None
    except SQLAlchemyError as exc:
        db_ok, db_error = False, str(exc).splitlines()[0]
    analytics = getattr(request.app.state, "analytics", None)
    body = {"status": "ok" if db_ok else "degraded", "database": "ok" if db_ok else db_error,
            "ingest": as_plain(getattr(ctx, "ingest_stats", None)),
            "analytics": analytics.status() if analytics is not None else {"enabled": False}}
    return JSONResponse(body, status_code=200 if db_ok else 503)
