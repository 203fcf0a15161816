"""Drift signals: per-input running mean/std, prediction-class histogram, confidence statistics.

Input statistics run since start (Chan's parallel Welford update, so a whole batch is folded in at once);
predictions and confidences cover one telemetry interval and are reset by :meth:`DriftMonitor.snapshot`.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping

import numpy as np

from edgekit.wire import DriftStats, InputStats

__all__ = ["DriftMonitor", "RunningStats"]


class RunningStats:
    """Mean and variance of a stream of numbers, updated a batch at a time."""

    __slots__ = ("count", "mean", "m2")

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        n = int(v.size)
        if n == 0:
            return
        b_mean = float(v.mean())
        b_m2 = float(((v - b_mean) ** 2).sum())
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count > 1 else 0.0

    def to_wire(self) -> InputStats:
        return InputStats(count=self.count, mean=self.mean, std=self.std)


def _confidences(scores: np.ndarray) -> np.ndarray:
    """Max class probability per row; logits go through a softmax first."""
    s = scores.astype(np.float64)
    is_prob = bool(np.all((s >= 0) & (s <= 1))) and bool(np.allclose(s.sum(axis=1), 1.0, atol=1e-3))
    if not is_prob:
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        s = e / e.sum(axis=1, keepdims=True)
    return s.max(axis=1)


class DriftMonitor:
    """Folds every served request into drift statistics; cheap enough for the request path."""

    def __init__(self, labels: list[str] | None = None, max_confidences: int = 10_000):
        self._lock = threading.Lock()
        self._inputs: dict[str, RunningStats] = {}
        self._predictions: Counter[str] = Counter()
        self._conf: deque[float] = deque(maxlen=max_confidences)
        self.labels = labels

    def reset(self, labels: list[str] | None = None) -> None:
        """Start over (a new model was installed: its statistics are not comparable)."""
        with self._lock:
            self._inputs.clear()
            self._predictions.clear()
            self._conf.clear()
            self.labels = labels

    def observe(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                labels: list[str] | None = None) -> None:
        """Fold one request in; ``labels`` name the classes (default: those given at reset)."""
        labels = labels if labels is not None else self.labels
        with self._lock:
            for name, arr in feeds.items():
                if arr.dtype.kind in "fiub":
                    self._inputs.setdefault(name, RunningStats()).update(arr)
            if not outputs:
                return
            first = next(iter(outputs.values()))
            if first.ndim != 2 or first.shape[1] < 2 or first.dtype.kind != "f" or not np.all(np.isfinite(first)):
                return
            classes = first.argmax(axis=1)
            for c in classes.tolist():
                key = labels[c] if labels and c < len(labels) else str(c)
                self._predictions[key] += 1
            self._conf.extend(_confidences(first).tolist())

    def snapshot(self, *, reset_interval: bool = True) -> DriftStats:
        with self._lock:
            conf = np.fromiter(self._conf, dtype=np.float64)
            stats = DriftStats(
                inputs={k: v.to_wire() for k, v in self._inputs.items()},
                predictions=dict(self._predictions),
                confidence_mean=float(conf.mean()) if conf.size else None,
                confidence_p10=float(np.percentile(conf, 10)) if conf.size else None,
            )
            if reset_interval:
                self._predictions.clear()
                self._conf.clear()
        return stats
