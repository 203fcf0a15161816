"""Translate edgekit errors into HTTP answers with a clear message: bad input is a 4xx, never a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from edgekit.errors import (
    BundleError,
    BundleVerificationError,
    ConfigError,
    EdgekitError,
    FleetError,
    RolloutError,
    UntrustedKeyError,
)
from fleet.auth import TokenNotFoundError
from fleet.registry import BundleConflictError, BundleNotFoundError

__all__ = ["NotFoundError", "install_error_handlers", "status_for"]

log = logging.getLogger(__name__)


class NotFoundError(FleetError):
    """A resource named in the URL does not exist (404)."""


def status_for(exc: EdgekitError) -> int:
    """The HTTP status of an edgekit error (most specific class first)."""
    if isinstance(exc, NotFoundError | BundleNotFoundError | TokenNotFoundError):
        return 404
    if isinstance(exc, BundleConflictError):
        return 409
    if isinstance(exc, RolloutError):
        return 409  # the rollout routes answer bad definitions (422) and unknown ids (404) themselves
    if isinstance(exc, UntrustedKeyError | BundleVerificationError | ConfigError | BundleError):
        return 422
    return 400


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"detail": message, "error": kind}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(EdgekitError)
    async def _edgekit(_request: Request, exc: EdgekitError) -> JSONResponse:
        return _error(status_for(exc), str(exc), type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return JSONResponse({"detail": f"{loc}: {first.get('msg')}", "error": "ValidationError",
                             "errors": [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errs]},
                            status_code=422)

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc)
        return _error(503, "the fleet database is unavailable; retry shortly", "DatabaseUnavailable")
