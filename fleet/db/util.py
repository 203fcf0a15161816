"""Small query helpers shared by the fleet's modules."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["IN_CHUNK", "chunked"]

T = TypeVar("T")

#: ids per ``IN (...)`` clause: far below SQLite's bound-parameter limit, fine for PostgreSQL
IN_CHUNK = 900


def chunked(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size`` (so a 100,000-device wave never builds one huge IN)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
