"""``edgekit compress``: distill, prune, quantize, export and verify a model against a budget.

The toolchain is a registry of passes keyed by their frozen config type (torchao style); each pass
takes an :class:`~edgekit.compress.artifact.Artifact` and returns a new one (Olive style), cached on
disk by (input hash, config hash). Recipes (:mod:`edgekit.compress.recipe`) list passes; budget mode
(:mod:`edgekit.compress.budget`) searches them by measured latency. Everything here may import torch;
nothing outside ``edgekit.compress`` imports this package at import time, so the agent runs without it.

Lazy attributes keep ``import edgekit.compress`` cheap (no torch until a pass is used).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Artifact", "Budget", "PassConfig", "register_pass", "run_budget", "run_pass", "run_recipe_file"]

_LAZY = {
    "Artifact": "edgekit.compress.artifact",
    "Budget": "edgekit.compress.context",
    "PassConfig": "edgekit.compress.registry",
    "register_pass": "edgekit.compress.registry",
    "run_pass": "edgekit.compress.registry",
    "run_budget": "edgekit.compress.budget",
    "run_recipe_file": "edgekit.compress.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit.compress' has no attribute {name!r}")
