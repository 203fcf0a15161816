"""Latency / throughput / memory measurement of a session (``edgekit bench`` and ``hil/``)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.manifest import TensorSpec
from runtimes.base import Session

__all__ = ["BenchResult", "benchmark", "synthetic_feeds"]


@dataclass(frozen=True)
class BenchResult:
    runtime: str
    batch: int
    iterations: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    peak_rss_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_feeds(specs: list[TensorSpec], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that fit ``specs`` (normal floats; small non-negative integers for ids/masks)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        shape = s.concrete(batch)
        if s.dtype.startswith("float"):
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype == "bool":
            feeds[s.name] = np.ones(shape, dtype=bool)
        else:
            feeds[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
    return feeds


def _peak_rss_mb() -> float:
    """This process's peak resident memory.

    Linux's ``VmHWM`` belongs to the current address space and starts afresh at exec; ``ru_maxrss``
    does not: a child inherits its parent's peak across fork and exec, so a probe started from a large
    process (a test runner, a notebook) would report the parent's memory as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def benchmark(
    session: Session,
    feeds: Mapping[str, np.ndarray],
    *,
    runtime: str,
    warmup: int = 20,
    iterations: int = 200,
    on_step: Callable[[], None] | None = None,
) -> BenchResult:
    """Warm up, then time ``iterations`` sequential ``run`` calls with ``perf_counter_ns``."""
    for _ in range(warmup):
        session.run(feeds)
    times = np.empty(iterations, dtype=np.float64)
    start = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter_ns()
        session.run(feeds)
        times[i] = (time.perf_counter_ns() - t0) / 1e6
        if on_step:
            on_step()
    wall = time.perf_counter() - start
    batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return BenchResult(
        runtime=runtime,
        batch=batch,
        iterations=iterations,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(times.mean()),
        throughput_per_s=float(iterations * batch / wall),
        peak_rss_mb=_peak_rss_mb(),
    )
