"""Tables of the fleet's web side: API tokens, the hash-chained audit log, analytics sync watermarks.

They live on the shared :class:`fleet.db.base.Base`, so the fleet's alembic migrations create them with
the rest of the schema. Secrets are never stored: a token row holds the sha256 of its secret only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet.db.base import Base

__all__ = ["SCOPES", "ApiToken", "AuditEntry", "SyncWatermark"]

#: token scopes, weakest first: ``read`` may GET, ``admin`` may also change things
SCOPES = ("read", "admin")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ApiToken(Base):
    """An API token. The secret is shown once at creation; only its sha256 is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("scope IN ('read', 'admin')", name="scope"),)

    #: public identifier, also the token's prefix (``ekt_<id>_<secret>``), so lookup needs no secret
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEntry(Base):
    """One append-only audit record; ``hash`` = sha256 over the canonical entry including ``prev_hash``."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class SyncWatermark(Base):
    """The highest source-row id already copied into an analytics table (one row per source table)."""

    __tablename__ = "sync_watermarks"

    table_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow, onupdate=_utcnow)
