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
    """Folds every served request into drift statistics.

    ``observe`` only queues references (cheap on the request path); the numbers are folded in bulk,
    vectorised, every ``flush_every`` requests and whenever a snapshot is taken.
    """

    def __init__(self, labels: list[str] | None = None, max_confidences: int = 10_000, flush_every: int = 256):
        self._lock = threading.Lock()
        self._inputs: dict[str, RunningStats] = {}
        self._predictions: Counter[str] = Counter()
        self._conf: deque[float] = deque(maxlen=max_confidences)
        self._pending: list[tuple[Mapping[str, np.ndarray], np.ndarray | None, list[str] | None]] = []
        self.flush_every = flush_every
        self.max_pending_bytes = 4 << 20
        self._pending_bytes = 0
        self.labels = labels

    def reset(self, labels: list[str] | None = None) -> None:
        """Start over (a new model was installed: its statistics are not comparable)."""
        with self._lock:
            self._inputs.clear()
            self._predictions.clear()
            self._conf.clear()
            self._pending.clear()
            self._pending_bytes = 0
            self.labels = labels

    def observe(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                labels: list[str] | None = None) -> None:
        """Queue one request; ``labels`` name the classes (default: those given at reset)."""
        first = next(iter(outputs.values())) if outputs else None
        size = sum(a.nbytes for a in feeds.values())
        with self._lock:
            self._pending.append((feeds, first, labels if labels is not None else self.labels))
            self._pending_bytes += size
            # bounded by count and by memory held (a device may get large images)
            if len(self._pending) < self.flush_every and self._pending_bytes < self.max_pending_bytes:
                return
            self._flush_locked()

    def _flush_locked(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        if not pending:
            return
        by_input: dict[str, list[np.ndarray]] = {}
        for feeds, _, _ in pending:
            for name, arr in feeds.items():
                if arr.dtype.kind in "fiub":
                    by_input.setdefault(name, []).append(arr.ravel())
        for name, parts in by_input.items():
            self._inputs.setdefault(name, RunningStats()).update(np.concatenate(parts))
        groups: dict[tuple, list[np.ndarray]] = {}
        for _, out, labels in pending:
            if out is None or out.ndim != 2 or out.shape[1] < 2 or out.dtype.kind != "f":
                continue
            groups.setdefault((out.shape[1], tuple(labels) if labels else None), []).append(out)
        for (_, labels), parts in groups.items():
            scores = np.concatenate(parts)
            scores = scores[np.all(np.isfinite(scores), axis=1)]
            if not scores.size:
                continue
            classes, counts = np.unique(scores.argmax(axis=1), return_counts=True)
            for c, n in zip(classes.tolist(), counts.tolist(), strict=True):
                key = labels[c] if labels and c < len(labels) else str(c)
                self._predictions[key] += n
            self._conf.extend(_confidences(scores).tolist())

    def snapshot(self, *, reset_interval: bool = True) -> DriftStats:
        with self._lock:
            self._flush_locked()
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
