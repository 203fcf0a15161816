"""API tokens (admin): list, create (the secret is returned once), revoke. Every change is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from fleet.api.deps import Admin, Ctx, Reader
from fleet.audit import record
from fleet.auth import create_token, list_tokens, revoke_token

__all__ = ["me_router", "router"]

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])
me_router = APIRouter()


class TokenOut(BaseModel):
    id: str
    name: str
    scope: str
    created_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    scope: Literal["read", "admin"] = "read"


class TokenCreated(TokenOut):
    #: shown once; only its hash is stored
    token: str


@me_router.get("/api/v1/whoami", tags=["tokens"], summary="The calling token's name and scope")
def whoami(principal: Reader) -> dict[str, str]:
    return {"id": principal.token_id, "name": principal.name, "scope": principal.scope}


@router.get("", response_model=list[TokenOut], summary="API tokens (never their secrets)")
def tokens(ctx: Ctx, _p: Admin) -> list[TokenOut]:
    with ctx.database.session() as s:
        return [TokenOut(**vars(t)) for t in list_tokens(s)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated,
             summary="Create a token; the secret is in this answer only")
def create(body: TokenCreate, ctx: Ctx, principal: Admin) -> TokenCreated:
    with ctx.database.session() as s:
        secret, info = create_token(s, body.name, body.scope)
        record(s, principal.actor, "token.create", f"token:{info.id}", {"name": info.name, "scope": info.scope})
    return TokenCreated(token=secret, **vars(info))


@router.delete("/{token_id}", response_model=TokenOut, summary="Revoke a token")
def revoke(token_id: str, ctx: Ctx, principal: Admin) -> TokenOut:
    with ctx.database.session() as s:
        info = revoke_token(s, token_id)
        record(s, principal.actor, "token.revoke", f"token:{info.id}", {"name": info.name})
    return TokenOut(**vars(info))
