"""Quality metrics and how a budget reads them.

* ``accuracy`` (built in): top-1 of the first output against integer labels, in [0, 1]; the budget is
  a maximum drop in percentage points (``--max-accuracy-drop 0.5``).
* ``fidelity`` (built in, for unlabeled data): mean cosine similarity of the candidate's outputs
  to the source model's on the same samples; the budget is a minimum (``--min-fidelity 0.99``).
* ``relative-error`` (built in): scored as ``1 − ‖out − ref‖/‖ref‖`` (reported as ``fidelity-relerr``),
  so the same ``--min-fidelity`` floor reads "at most 1 % relative error" at 0.99.
* ``module:function(outputs: dict[str, ndarray], labels) -> float`` for anything else (higher is better;
  budget as a maximum drop in the metric's own units × 100, like accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.compress.refs import resolve_ref
from edgekit.errors import ConfigError

__all__ = ["Metric", "accuracy", "cosine_fidelity", "get_metric", "relative_error"]


def accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    logits = next(iter(outputs.values()))
    pred = np.asarray(logits).reshape(len(labels), -1).argmax(axis=1)
    return float((pred == np.asarray(labels).reshape(-1)).mean())


def cosine_fidelity(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """Mean per-sample cosine similarity over every output (1.0 = identical direction)."""
    sims = []
    for name, ref in reference.items():
        a = np.asarray(outputs[name], dtype=np.float64).reshape(len(ref), -1)
        b = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
        num = (a * b).sum(axis=1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        sims.append(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0))
    return float(np.mean(np.concatenate(sims)))


def relative_error(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """‖out − ref‖ / ‖ref‖ over all outputs."""
    num = sum(float(np.sum((np.asarray(outputs[k], np.float64) - r) ** 2)) for k, r in reference.items())
    den = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in reference.values())
    return float(np.sqrt(num / max(den, 1e-30)))


@dataclass(frozen=True)
class Metric:
    """A named score (higher is better) computed from outputs, labels and the source model's outputs."""

    name: str
    needs_labels: bool
    fn: Callable[[Mapping[str, np.ndarray], np.ndarray | None, Mapping[str, np.ndarray] | None], float]

    def __call__(self, outputs, labels=None, reference=None) -> float:
        return float(self.fn(outputs, labels, reference))


def get_metric(name: str, *, labeled: bool, base: Path | None = None) -> Metric:
    """``accuracy`` / ``fidelity`` / ``module:function``; unlabeled data always uses fidelity."""
    if name == "fidelity" or (name == "accuracy" and not labeled):
        return Metric("fidelity", False, lambda o, y, ref: cosine_fidelity(o, ref))
    if name in ("relative-error", "fidelity-relerr"):
        return Metric("fidelity-relerr", False, lambda o, y, ref: 1.0 - relative_error(o, ref))
    if name == "accuracy":
        return Metric("accuracy", True, lambda o, y, ref: accuracy(o, y))
    fn = resolve_ref(name, what="metric", search_path=base)
    return Metric(name, labeled, lambda o, y, ref: _custom(fn, name, o, y))


def _custom(fn, name: str, outputs, labels) -> float:
    try:
        value = float(fn(dict(outputs), labels))
    except Exception as exc:  # user code
        raise ConfigError(f"metric {name} failed: {type(exc).__name__}: {exc}") from exc
    if not np.isfinite(value):
        raise ConfigError(f"metric {name} returned {value}")
    return value
