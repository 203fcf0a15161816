"""``create_app(ctx)``: the fleet manager's FastAPI application (API, health probe, dashboard).

An app factory: nothing is created at import; the database, registry and rollout manager come in
through the :class:`~fleet.context.FleetContext`. OpenAPI docs are at ``/docs``; the dashboard at ``/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from fleet.api.errors import install_error_handlers
from fleet.api.routes import audit, bundles, devices, health, rollouts, telemetry, tokens
from fleet.context import FleetContext

__all__ = ["DASHBOARD_DIR", "create_app"]

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"


#: the dashboard loads only its own scripts and talks only to this origin
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def create_app(ctx: FleetContext, *, public_downloads: bool = False) -> FastAPI:
    """Build the app for ``ctx``.

    ``public_downloads``: serve ``/api/v1/bundles/{name}/{version}/download`` without a token (bundles
    are signed and verified on the device; set it when the agents are not given a read token).
    """
    app = FastAPI(
        title="edgekit fleet manager",
        version="1",
        summary="Devices, bundles, health-gated rollouts, telemetry and the audit log of an edgekit fleet.",
        description="Authenticate with `Authorization: Bearer <token>`; `read` tokens may GET, "
                    "`admin` tokens may also change things. Every change lands in the hash-chained audit log.",
    )
    app.state.ctx = ctx
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
