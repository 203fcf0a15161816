"""Dependencies shared by the routers: the fleet context and the caller's principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fleet.auth import Principal, require_admin, require_read
from fleet.context import FleetContext

__all__ = ["Admin", "Ctx", "Reader", "get_ctx"]


def get_ctx(request: Request) -> FleetContext:
    """The :class:`FleetContext` the app was built with."""
    return request.app.state.ctx


Ctx = Annotated[FleetContext, Depends(get_ctx)]
#: any valid token (GET endpoints)
Reader = Annotated[Principal, Depends(require_read)]
#: an admin token (every write)
Admin = Annotated[Principal, Depends(require_admin)]
