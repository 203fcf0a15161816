"""Run a torch module or an ONNX file over an :class:`ArraySet` in batches (for metrics and parity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.compress.data import ArraySet
from edgekit.manifest import TensorSpec
from edgekit.profiles import DeviceProfile
from runtimes.ort import OnnxRuntime

__all__ = ["outputs_tuple", "predict_onnx", "predict_torch"]


def outputs_tuple(result) -> tuple[torch.Tensor, ...]:
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, dict):
        return tuple(result.values())
    return tuple(result)


def predict_torch(module: nn.Module, data: ArraySet, inputs: list[TensorSpec] | tuple[TensorSpec, ...],
                  output_names: list[str], batch: int = 256) -> dict[str, np.ndarray]:
    """Eval-mode forward over ``data``; outputs by name, concatenated."""
    module.eval()
    chunks: list[tuple[np.ndarray, ...]] = []
    with torch.inference_mode():
        for b in data.batches(batch):
            args = [torch.from_numpy(np.ascontiguousarray(b.inputs[s.name])) for s in inputs]
            chunks.append(tuple(t.detach().float().numpy() if t.is_floating_point() else t.numpy()
                                for t in outputs_tuple(module(*args))))
    return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(output_names)}


def predict_onnx(path: Path, data: ArraySet, profile: DeviceProfile | None = None, *, threads: int | None = None,
                 batch: int = 256) -> dict[str, np.ndarray]:
    """ONNX Runtime forward over ``data`` through the ``runtimes`` backend."""
    with OnnxRuntime().load(Path(path), profile, threads=threads) as session:
        names = [s.name for s in session.inputs]
        outs: dict[str, list[np.ndarray]] = {}
        for b in data.batches(batch):
            res = session.run({n: b.inputs[n] for n in names})
            for k, v in res.items():
                outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}
