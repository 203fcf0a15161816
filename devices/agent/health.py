"""Post-install checks of a loaded model: warm-up and the bundle's golden set.

Outputs must match ``golden.npz`` within the manifest's ``atol``/``rtol``; for classifiers with golden
labels, accuracy must reach ``tolerance.min_golden_accuracy``. A failure is a
:class:`~edgekit.errors.HealthCheckError` naming what failed, and the model is never switched in.
"""

from __future__ import annotations

import numpy as np

from edgekit.bundle import GoldenSet
from edgekit.errors import EdgekitError, HealthCheckError
from edgekit.manifest import Manifest
from edgekit.wire import GoldenResult
from runtimes.base import Session

__all__ = ["golden_check", "warm_up"]


def warm_up(session: Session, golden: GoldenSet | None, manifest: Manifest, runs: int = 3) -> None:
    """A few runs on one sample so first-request latency is not paid by a client."""
    if golden is not None:
        feeds = {k: v[:1] for k, v in golden.inputs.items()}
    else:
        feeds = {s.name: np.zeros(s.concrete(1), dtype=s.dtype) for s in manifest.inputs}
    try:
        for _ in range(runs):
            session.run(feeds)
    except EdgekitError as exc:
        raise HealthCheckError(f"warm-up run failed: {exc}") from exc


def golden_check(session: Session, manifest: Manifest, golden: GoldenSet | None) -> GoldenResult:
    """Run the golden inputs; raise :class:`HealthCheckError` unless outputs and accuracy hold."""
    if golden is None:
        return GoldenResult(passed=True)
    try:
        outputs = session.run(golden.inputs)
    except EdgekitError as exc:
        raise HealthCheckError(f"golden inputs failed to run: {exc}") from exc
    tol = manifest.tolerance
    worst = 0.0
    for name, expected in golden.outputs.items():
        if name not in outputs:
            raise HealthCheckError(f"golden output {name!r} is not produced by the model")
        got = np.asarray(outputs[name])
        if got.shape != expected.shape:
            raise HealthCheckError(f"golden output {name!r}: shape {list(got.shape)} != expected {list(expected.shape)}")
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
        if not np.allclose(got, expected, atol=tol.atol, rtol=tol.rtol, equal_nan=False):
            raise HealthCheckError(
                f"golden output {name!r} differs by up to {worst:.3g} (atol {tol.atol}, rtol {tol.rtol})"
            )
    accuracy = None
    if golden.labels is not None and manifest.outputs:
        scores = np.asarray(outputs[manifest.outputs[0].name])
        if scores.ndim == 2 and scores.shape[0] == len(golden.labels):
            accuracy = float((scores.argmax(axis=1) == np.asarray(golden.labels).astype(np.int64)).mean())
            if tol.min_golden_accuracy is not None and accuracy < tol.min_golden_accuracy:
                raise HealthCheckError(
                    f"golden accuracy {accuracy:.3f} is below the manifest's minimum {tol.min_golden_accuracy}"
                )
    return GoldenResult(passed=True, accuracy=accuracy, max_abs_error=worst)
