"""``create_app(ctx)``: the fleet manager's FastAPI application (API, health probe, dashboard).

An app factory: nothing is created at import; the database, registry and rollout manager come in
through the :class:`~fleet.context.FleetContext`. OpenAPI docs are at ``/docs``; the dashboard at ``/``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from edgekit.errors import ConfigError
from fleet.api.errors import install_error_handlers
from fleet.api.routes import audit, bundles, devices, health, rollouts, telemetry, tokens
from fleet.audit import enforce_append_only
from fleet.context import FleetContext

if TYPE_CHECKING:  # the analytics stack (pyiceberg, pyarrow) is imported only when the sync runs
    from fleet.analytics.settings import AnalyticsSettings

__all__ = ["DASHBOARD_DIR", "create_app"]

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"

log = logging.getLogger(__name__)


#: the dashboard loads only its own scripts and talks only to this origin
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _lifespan(ctx: FleetContext, analytics: AnalyticsSettings | None):
    """At start-up: make the audit log append-only in the database; run the Iceberg sync loop while
    the app runs (stopped, with a last sync, at shutdown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from fleet.analytics.settings import load_analytics_settings

        try:
            await anyio.to_thread.run_sync(enforce_append_only, ctx.database)
        except SQLAlchemyError as exc:  # the hash chain still detects tampering; say so and serve
            log.warning("audit log append-only triggers not installed: %s", exc)

        try:
            settings = analytics or load_analytics_settings()
        except ConfigError as exc:  # a bad EDGEKIT_ANALYTICS_* must not keep the fleet from serving
            log.error("analytics sync not started: %s", exc)
            settings = None
        loop = None
        if settings is not None and settings.enabled:
            from fleet.analytics.iceberg import BackgroundSync, IcebergSync

            try:
                loop = BackgroundSync(IcebergSync(ctx.database, settings, ctx.settings.data_dir)).start()
            except (ConfigError, OSError) as exc:
                log.error("analytics sync not started: %s", exc)
        app.state.analytics = loop
        try:
            yield
        finally:
            if loop is not None:
                await anyio.to_thread.run_sync(loop.stop)

    return lifespan


def create_app(ctx: FleetContext, *, public_downloads: bool = False,
               analytics: AnalyticsSettings | None = None) -> FastAPI:
    """Build the app for ``ctx``.

    ``public_downloads``: serve ``/api/v1/bundles/{name}/{version}/download`` without a token (bundles
    are signed and verified on the device; set it when the agents are not given a read token).
    ``analytics``: the Iceberg sync run for the app's lifetime; default from ``EDGEKIT_ANALYTICS_*``
    (``EDGEKIT_ANALYTICS_ENABLED=false`` turns it off).
    """
    app = FastAPI(
        lifespan=_lifespan(ctx, analytics),
        title="edgekit fleet manager",
        version="1",
        summary="Devices, bundles, health-gated rollouts, telemetry and the audit log of an edgekit fleet.",
        description="Authenticate with `Authorization: Bearer <token>`; `read` tokens may GET, "
                    "`admin` tokens may also change things. Every change lands in the hash-chained audit log.",
    )
    app.state.ctx = ctx
    app.state.analytics = None
    app.state.public_downloads = public_downloads
    install_error_handlers(app)
    for module in (health, devices, bundles, rollouts, telemetry, audit, tokens):
        app.include_router(module.router)
    app.include_router(tokens.me_router)

    index = DASHBOARD_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"cache-control": "no-cache", **_PAGE_HEADERS})

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_alias() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/static", StaticFiles(directory=DASHBOARD_DIR / "static"), name="static")
    return app
