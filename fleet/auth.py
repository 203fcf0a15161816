"""API tokens: created once (the secret is shown to the caller and never stored), verified in constant
time, revoked, and scoped ``read`` (GET only) or ``admin`` (everything).

A token reads ``ekt_<id>_<secret>``: the public ``id`` finds the row, the sha256 of ``secret`` is
compared with :func:`hmac.compare_digest`. The FastAPI dependencies :func:`require_read` and
:func:`require_admin` answer 401 for a missing/invalid/revoked token and 403 for a too-weak scope.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from edgekit.errors import ConfigError, FleetError
from fleet.audit import record
from fleet.db.web_models import SCOPES, ApiToken

if TYPE_CHECKING:
    from fleet.context import FleetContext
    from fleet.db.base import Database

__all__ = [
    "SCOPES",
    "Principal",
    "TokenInfo",
    "TokenNotFoundError",
    "create_token",
    "ensure_admin_token",
    "list_tokens",
    "require_admin",
    "require_read",
    "revoke_token",
    "verify_token",
]

_PG_LOCK_KEY = 0x656B746F6B656E  # "ektoken"
_TOKEN = re.compile(r"^ekt_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})$")
#: last_used_at is refreshed at most this often, so a busy dashboard does not write on every GET
_TOUCH_EVERY = timedelta(seconds=60)


class TokenNotFoundError(FleetError):
    """No API token with the given id."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name and scope (``actor`` is what the audit log records)."""

    token_id: str
    name: str
    scope: str

    @property
    def actor(self) -> str:
        return f"token:{self.name}({self.token_id})"

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


@dataclass(frozen=True)
class TokenInfo:
    """A token's metadata (never its secret)."""

    id: str
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything here is UTC."""
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.name, row.scope, _aware(row.created_at), _aware(row.revoked_at),
                     _aware(row.last_used_at))


def create_token(session: Session, name: str, scope: str) -> tuple[str, TokenInfo]:
    """Create a token; returns ``(secret_token, info)``. The secret is not recoverable afterwards."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown token scope {scope!r}; choose one of {', '.join(SCOPES)}")
    name = name.strip()
    if not name or len(name) > 128:
        raise ConfigError("a token needs a name of 1-128 characters")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiToken(id=token_id, name=name, scope=scope, secret_sha256=_hash(secret),
                   created_at=datetime.now(timezone.utc))
    session.add(row)
    session.flush()
    return f"ekt_{token_id}_{secret}", _info(row)


def verify_token(session: Session, token: str, *, touch: bool = True) -> Principal | None:
    """The principal of a valid, unrevoked token, else ``None``. The secret is compared in constant time."""
    m = _TOKEN.match(token or "")
    if not m:
        return None
    token_id, secret = m.groups()
    row = session.get(ApiToken, token_id)
    # Compare even when the row is missing so timing does not reveal which ids exist.
    expected = row.secret_sha256 if row is not None else _hash("")
    ok = hmac.compare_digest(_hash(secret), expected)
    if row is None or not ok or row.revoked_at is not None:
        return None
    now = datetime.now(timezone.utc)
    last = _aware(row.last_used_at)
    if touch and (last is None or now - last > _TOUCH_EVERY):
        row.last_used_at = now
    return Principal(token_id=row.id, name=row.name, scope=row.scope)


def revoke_token(session: Session, token_id: str) -> TokenInfo:
    """Revoke a token by id (idempotent); unknown ids raise :class:`FleetError`."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise TokenNotFoundError(f"no API token with id {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(timezone.utc)
    session.flush()
    return _info(row)


def list_tokens(session: Session) -> list[TokenInfo]:
    return [_info(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.created_at))]


def ensure_admin_token(ctx: FleetContext | Database, name: str = "admin") -> str | None:
    """First start of a fleet: create an admin token and return its secret (print it once).

    Returns ``None`` when an unrevoked admin token already exists, so a restart prints nothing.
    """
    db = getattr(ctx, "database", ctx)
    with db.session() as s:
        _serialise(s)  # two replicas starting together must not both mint a first admin token
        exists = s.scalar(
            select(ApiToken.id).where(ApiToken.scope == "admin", ApiToken.revoked_at.is_(None)).limit(1)
        )
        if exists is not None:
            return None
        secret, info = create_token(s, name, "admin")
        record(s, "system", "token.create", f"token:{info.id}", {"name": info.name, "scope": "admin",
                                                                    "reason": "first start"})
    return secret


def _serialise(session: Session) -> None:
    """Hold the database's write lock (SQLite) or a transaction-scoped advisory lock (PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    elif dialect == "sqlite":
        session.execute(text("UPDATE api_tokens SET name = name WHERE 1 = 0"))


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-token") or None


def _authenticate(request: Request) -> Principal:
    token = _bearer(request)
    if token is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API token (send 'Authorization: Bearer <token>')",
                            headers={"WWW-Authenticate": "Bearer"})
    ctx: FleetContext = request.app.state.ctx
    with ctx.database.session() as s:
        principal = verify_token(s, token)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API token",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


#: declares the bearer scheme in the OpenAPI document (the "Authorize" button of /docs); the header is
#: read by :func:`_authenticate`, which also accepts ``X-API-Token``. A stateless description object.
_BEARER = HTTPBearer(auto_error=False, scheme_name="APIToken",
                     description="An edgekit fleet API token (`ekt_…`); read scope may GET, admin may also write.")


def require_read(request: Request, _creds: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> Principal:
    """FastAPI dependency: any valid token (``read`` or ``admin``)."""
    return _authenticate(request)


def require_admin(request: Request, _creds: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> Principal:
    """FastAPI dependency: an ``admin`` token; a ``read`` token gets 403."""
    principal = _authenticate(request)
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"token '{principal.name}' has scope '{principal.scope}'; this action needs 'admin'")
    return principal
