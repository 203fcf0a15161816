"""Small helpers shared by the routers."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

__all__ = ["as_plain", "utc"]


def utc(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC, so say so in the API."""
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts


def as_plain(obj: Any) -> Any:
    """A JSON-able view of a stats object (dataclass, pydantic model, ``as_dict()`` or plain attributes)."""
    if obj is None:
        return None
    for attr in ("as_dict", "snapshot", "to_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            return fn()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: v for k, v in dataclasses.asdict(obj).items() if isinstance(v, int | float | str | bool | None)}
    if isinstance(obj, dict):
        return obj
    return {k: v for k, v in vars(obj).items() if not k.startswith("_") and isinstance(v, int | float | str | bool)}
