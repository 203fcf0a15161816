"""A fake runtime for unit tests: scripted latency, failures and outputs, no model file needed.

Each loaded "model" is a JSON file (or nothing, with defaults) describing inputs/outputs; ``run``
returns deterministic outputs derived from the inputs (the mean of each sample, tiled), so tests can
assert on them. ``latency_ms`` and ``fail_every`` script slow or flaky behaviour.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.errors import RuntimeBackendError
from edgekit.manifest import TensorSpec
from edgekit.profiles import DeviceProfile
from runtimes.base import SessionBase, check_inputs

__all__ = ["FakeRuntime", "FakeSession"]

DEFAULT_INPUTS = [TensorSpec(name="input", dtype="float32", shape=["batch", 4])]
DEFAULT_OUTPUTS = [TensorSpec(name="output", dtype="float32", shape=["batch", 3])]


class FakeSession(SessionBase):
    def __init__(
        self,
        inputs: list[TensorSpec] | None = None,
        outputs: list[TensorSpec] | None = None,
        *,
        latency_ms: float = 0.0,
        fail_every: int = 0,
    ):
        self._inputs = inputs or DEFAULT_INPUTS
        self._outputs = outputs or DEFAULT_OUTPUTS
        self.latency_ms = latency_ms
        self.fail_every = fail_every
        self.calls = 0
        self._lock = threading.Lock()
        self.closed = False


    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise RuntimeBackendError("session is closed")
        feeds = check_inputs(self._inputs, feeds)
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.fail_every and n % self.fail_every == 0:
            raise RuntimeBackendError(f"scripted failure on call {n}")
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        first = next(iter(feeds.values()))
        batch = first.shape[0] if first.ndim else 1
        means = first.reshape(batch, -1).astype(np.float64).mean(axis=1)
        out = {}
        for spec in self._outputs:
            shape = spec.concrete(batch)
            width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            vals = means[:, None] + np.arange(width)[None, :]
            out[spec.name] = vals.reshape(shape).astype(spec.dtype)
        return out

    def close(self) -> None:
        self.closed = True


class FakeRuntime:
    name = "fake"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self, path: Path | None = None, profile: DeviceProfile | None = None, *, threads: int | None = None):
        cfg = {}
        if path is not None and Path(path).suffix == ".json":
            cfg = json.loads(Path(path).read_text())
        return FakeSession(
            [TensorSpec.model_validate(s) for s in cfg["inputs"]] if "inputs" in cfg else None,
            [TensorSpec.model_validate(s) for s in cfg["outputs"]] if "outputs" in cfg else None,
            latency_ms=float(cfg.get("latency_ms", 0.0)),
            fail_every=int(cfg.get("fail_every", 0)),
        )
