"""Turn the user's model (factory + checkpoint, TorchScript, ``.pt2`` or ONNX) into the source artifact."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.compress.artifact import Artifact
from edgekit.compress.cache import ArtifactCache, cache_key
from edgekit.compress.inference import outputs_tuple
from edgekit.compress.onnxutil import load_onnx, onnx_specs
from edgekit.compress.recipe import ModelSpec
from edgekit.compress.torchio import build_factory, load_torch_file, save_module
from edgekit.errors import ConfigError
from edgekit.manifest import TensorSpec

__all__ = ["import_source", "infer_output_specs", "source_hash"]


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve(base: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else base / path


def source_hash(spec: ModelSpec, base: Path) -> str:
    """sha256 of the model file (or of the checkpoint, for a factory model): the lineage's source hash."""
    if spec.path:
        return _file_sha(_resolve(base, spec.path))
    if spec.checkpoint:
        return _file_sha(_resolve(base, spec.checkpoint))
    return hashlib.sha256(f"{spec.factory}:{sorted(spec.kwargs.items())}".encode()).hexdigest()


def _load_checkpoint(module: torch.nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"checkpoint {path} does not exist") from exc
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError for non-state-dict files
        raise ConfigError(f"checkpoint {path} is not a plain state dict (loaded with weights_only=True): {exc}") from exc
    if isinstance(state, dict):
        for k in ("state_dict", "model_state_dict", "model"):
            if k in state and isinstance(state[k], dict):
                state = state[k]
                break
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} does not hold a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise ConfigError(f"checkpoint {path} does not fit the model: {' '.join(first[:3])[:400]}") from exc


def _example(inputs: list[TensorSpec], batch: int = 2, sample: dict[str, np.ndarray] | None = None):
    args = []
    for s in inputs:
        if sample and s.name in sample:
            args.append(torch.from_numpy(np.ascontiguousarray(sample[s.name][:batch])))
            continue
        shape = s.concrete(batch)
        if s.dtype.startswith("float"):
            args.append(torch.zeros(shape, dtype=getattr(torch, s.dtype)))
        else:
            args.append(torch.ones(shape, dtype=getattr(torch, s.dtype)))
    return tuple(args)


def infer_output_specs(module, inputs: list[TensorSpec], names: list[str] | None,
                       sample: dict[str, np.ndarray] | None = None) -> list[TensorSpec]:
    """Run the model once at batch 3 to learn its outputs (dim 0 symbolic when the inputs' is)."""
    args = _example(inputs, 3, sample)
    batch_sym = any(s.shape and isinstance(s.shape[0], str) for s in inputs)
    try:
        with torch.no_grad():
            module.eval()
            outs = outputs_tuple(module(*args))
    except Exception as exc:  # user model code
        shapes = ", ".join(f"{s.name}{list(s.concrete(3))}" for s in inputs)
        raise ConfigError(f"the model does not run on inputs {shapes}: {type(exc).__name__}: {exc}") from exc
    if names is not None and len(names) != len(outs):
        raise ConfigError(f"the recipe names {len(names)} output(s) but the model returns {len(outs)}")
    names = names or (["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))])
    specs = []
    for n, o in zip(names, outs, strict=True):
        shape: list[int | str] = list(o.shape)
        if batch_sym and shape and shape[0] == 3:
            shape[0] = "batch"
        dtype = str(o.dtype).replace("torch.", "")
        specs.append(TensorSpec(name=n, dtype=dtype, shape=shape))
    return specs


def import_source(spec: ModelSpec, inputs: list[TensorSpec] | None, output_names: list[str] | None,
                  cache: ArtifactCache, base: Path, sample: dict[str, np.ndarray] | None = None) -> tuple[Artifact, str]:
    """The source model as a cached artifact, and its source hash (for lineage)."""
    src_sha = source_hash(spec, base)
    if spec.path and spec.path.endswith(".onnx"):
        path = _resolve(base, spec.path)
        key = cache_key(src_sha, "source-onnx", {})

        def make(tmp: Path):
            shutil.copyfile(path, tmp / "model.onnx")
            ins, outs = onnx_specs(load_onnx(tmp / "model.onnx"))
            if inputs is not None and [s.name for s in inputs] != [s.name for s in ins]:
                raise ConfigError(f"the recipe's inputs {[s.name for s in inputs]} differ from the ONNX model's {[s.name for s in ins]}")
            return Artifact.create("onnx", tmp, ["model.onnx"], ins, outs, {"format": "onnx", "precision": "fp32"}), {}

        hit = cache.get(key)
        return (hit[0] if hit else cache.build(key, make)[0]), src_sha
    if not inputs:
        raise ConfigError("a PyTorch model needs its inputs described: 'inputs: [{name, dtype, shape: [batch, ...]}]'")
    cfg: dict[str, Any] = {"inputs": [s.model_dump() for s in inputs], "outputs": output_names,
                           "factory": spec.factory, "kwargs": spec.kwargs}
    key = cache_key(src_sha, "source-torch", cfg)
    hit = cache.get(key)
    if hit:
        return hit[0], src_sha

    def make_torch(tmp: Path):
        if spec.path:
            path = _resolve(base, spec.path)
            module = load_torch_file(path)
            fname, fmt = ("model.pt2", "export") if path.suffix == ".pt2" else ("model.ts", "torchscript")
            shutil.copyfile(path, tmp / fname)
            files = [fname]
            meta = {"format": fmt}
        else:
            module = build_factory(spec.factory, spec.kwargs, base)
            if spec.checkpoint:
                _load_checkpoint(module, _resolve(base, spec.checkpoint))
            files = save_module(module, tmp, spec.factory, spec.kwargs, base)
            meta = {"format": "factory", "factory": spec.factory}
        outs = infer_output_specs(module, inputs, output_names, sample)
        return Artifact.create("torch", tmp, files, inputs, outs, {**meta, "precision": "fp32"}), {}

    return cache.build(key, make_torch)[0], src_sha
