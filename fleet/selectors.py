"""Device selectors: pick devices by tag, group, profile or id.

Syntax: comma-separated ``key=value`` clauses, keys ``tag``, ``group``, ``profile``, ``id``; a bare
value continues the previous clause's value list, so ``id=a,b`` picks two ids. Values of one key are
alternatives (OR); different keys must all hold (AND)::

    tag=line-3,profile=raspberry-pi-5     devices tagged line-3 that are Raspberry Pi 5s
    id=cam-1,cam-2                        exactly these two
    group=eu,us                           devices in group eu or us
    all                                   every device
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from edgekit.errors import ConfigError

__all__ = ["SELECTOR_KEYS", "Selector", "parse_selector"]

SELECTOR_KEYS = ("tag", "group", "profile", "id")


class _DeviceLike(Protocol):
    id: str
    tags: list[str]
    group: str | None
    profile: str | None


@dataclass(frozen=True)
class Selector:
    """A parsed selector; ``clauses`` maps a key to the set of values any of which may match."""

    clauses: dict[str, frozenset[str]] = field(default_factory=dict)
    text: str = "all"

    @property
    def is_all(self) -> bool:
        return not self.clauses

    def matches(self, device: _DeviceLike) -> bool:
        """True when every clause holds for ``device``."""
        for key, values in self.clauses.items():
            if key == "tag":
                if not values.intersection(device.tags or ()):
                    return False
            elif key == "group":
                if device.group not in values:
                    return False
            elif key == "profile":
                if device.profile not in values:
                    return False
            elif key == "id" and device.id not in values:
                return False
        return True

    def filter(self, devices: Iterable[_DeviceLike]) -> list[_DeviceLike]:
        return [d for d in devices if self.matches(d)]

    def __str__(self) -> str:
        return self.text


def parse_selector(text: str) -> Selector:
    """Parse a selector string; anything malformed is a :class:`ConfigError` naming the problem."""
    if not isinstance(text, str):
        raise ConfigError("selector must be a string")
    s = text.strip()
    if s in ("all", "*"):
        return Selector({}, "all")
    if not s:
        raise ConfigError("empty selector (use 'all' to pick every device)")
    clauses: dict[str, set[str]] = {}
    key: str | None = None
    for raw in s.split(","):
        token = raw.strip()
        if not token:
            raise ConfigError(f"selector {text!r}: empty item between commas")
        if "=" in token:
            key, _, value = (p.strip() for p in token.partition("="))
            if key not in SELECTOR_KEYS:
                raise ConfigError(f"selector {text!r}: unknown key {key!r} (use one of {', '.join(SELECTOR_KEYS)})")
        else:
            if key is None:
                raise ConfigError(f"selector {text!r}: {token!r} needs a key, e.g. tag={token}")
            value = token
        if not value:
            raise ConfigError(f"selector {text!r}: {key}= has no value")
        clauses.setdefault(key, set()).add(value)
    canonical = ",".join(f"{k}={v}" for k in SELECTOR_KEYS if k in clauses for v in sorted(clauses[k]))
    return Selector({k: frozenset(v) for k, v in clauses.items()}, canonical)
