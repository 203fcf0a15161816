"""Resolve ``package.module:attribute`` references given by users (factories, data, metrics)."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

__all__ = ["is_ref", "resolve_ref"]

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_ref(text: str) -> bool:
    return bool(_REF.match(text))


def resolve_ref(ref: str, *, what: str = "reference", search_path: Path | None = None) -> Callable[..., Any]:
    """Import ``module:attr`` (``search_path`` is tried too, e.g. the recipe's folder)."""
    if not is_ref(ref):
        raise ConfigError(f"{what} {ref!r} is not of the form 'package.module:function'")
    mod_name, attr = ref.split(":", 1)
    added = False
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
        added = True
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {ref!r}: cannot import {mod_name}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(str(search_path))
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {ref!r}: {mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {ref!r} is not callable")
    return obj
