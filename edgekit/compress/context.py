"""What every pass may use besides its input artifact: data, target profile, metric, budget, progress."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgekit.compress.artifact import Artifact
from edgekit.compress.data import ArraySet, DataSplits
from edgekit.compress.metrics import Metric
from edgekit.profiles import DeviceProfile

__all__ = ["Budget", "PassContext", "is_fidelity"]


def is_fidelity(metric: str) -> bool:
    """Fidelity metrics (``fidelity`` = cosine, ``fidelity-relerr`` = 1 − relative error) have an absolute floor."""
    return metric.startswith("fidelity")


class Budget(BaseModel):
    """What the result must meet. Quality is relative to the source model on the validation set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: percentage points of accuracy (or a custom metric × 100) the result may lose
    max_accuracy_drop: float = Field(default=1.0, ge=0, le=100)
    #: minimum cosine similarity to the source model's outputs (unlabeled data)
    min_fidelity: float = Field(default=0.99, ge=0, le=1)
    latency_ms: float | None = Field(default=None, gt=0)
    max_size_mb: float | None = Field(default=None, gt=0)

    def quality_ok(self, metric: str, baseline: float, score: float) -> bool:
        if is_fidelity(metric):
            return score >= self.min_fidelity
        return (baseline - score) * 100.0 <= self.max_accuracy_drop + 1e-9

    def quality_gap(self, metric: str, baseline: float, score: float) -> float:
        """How far past the quality budget (≤ 0 inside it), in points (or fidelity units)."""
        if is_fidelity(metric):
            return self.min_fidelity - score
        return (baseline - score) * 100.0 - self.max_accuracy_drop

    def violations(self, metric: str, baseline: float, m: dict[str, float]) -> list[str]:
        out = []
        if metric in m and not self.quality_ok(metric, baseline, m[metric]):
            out.append(f"{metric} {m[metric]:.4f} vs source {baseline:.4f}")
        if self.latency_ms is not None and m.get("p50_ms", 0) > self.latency_ms:
            out.append(f"p50 {m['p50_ms']:.3f} ms > {self.latency_ms} ms")
        if self.max_size_mb is not None and m.get("size_mb", 0) > self.max_size_mb:
            out.append(f"size {m['size_mb']:.3f} MB > {self.max_size_mb} MB")
        return out


@dataclass
class PassContext:
    """Shared, read-only inputs of a run. Passes must not mutate it (Olive style: artifact in → out)."""

    data: DataSplits
    profile: DeviceProfile
    metric: Metric
    budget: Budget = field(default_factory=Budget)
    #: the source model's metric on the validation set, and its outputs there (fidelity reference)
    baseline: float | None = None
    reference_outputs: dict[str, np.ndarray] | None = None
    #: the source model (teacher for ``distill``, reference for parity and fidelity)
    source: Artifact | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    seed: int = 0
    threads: int | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True))
    quiet: bool = False
    #: how many validation samples evaluate uses (all when None)
    eval_samples: int | None = None
    bench_iterations: int = 200

    @property
    def val(self) -> ArraySet:
        return self.data.val if self.eval_samples is None else self.data.val.head(self.eval_samples)

    @property
    def reference_val(self) -> dict[str, np.ndarray] | None:
        if self.reference_outputs is None:
            return None
        n = len(self.val)
        return {k: v[:n] for k, v in self.reference_outputs.items()}

    def score(self, outputs: dict[str, np.ndarray]) -> float:
        return self.metric(outputs, self.val.labels, self.reference_val)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A rich progress bar on stderr; yields ``advance(n)``."""
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=True, disable=self.quiet,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    def warn(self, message: str) -> None:
        """Printed even with ``--quiet`` (which only silences progress)."""
        self.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
