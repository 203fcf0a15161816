"""Save and rebuild PyTorch modules without pickling them.

A factory-built module is stored as ``weights.pt`` (a plain state dict, read back with
``torch.load(weights_only=True)``) plus ``structure.json``: the factory reference and, per sub-module,
its plain attributes (``in_channels``, ``groups``, ``num_features`` ...). Structured pruning changes
those attributes and the tensor shapes, so a pruned model is rebuilt by calling the factory, applying
the recorded attributes, resizing the tensors and loading the state dict. This records what
torch-pruning's ``tp.state_dict`` records, minus the pickled ``module.__dict__`` (hooks, arbitrary
objects) that would force an unsafe ``torch.load``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.compress.artifact import Artifact
from edgekit.compress.refs import resolve_ref
from edgekit.errors import CompressError, ConfigError

__all__ = ["build_factory", "load_module", "load_torch_file", "save_module"]

_PRIMITIVE = (int, float, bool, str, type(None))


def _plain(value: Any) -> Any | None:
    if isinstance(value, _PRIMITIVE):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PRIMITIVE) for v in value):
        return {"__tuple__": list(value)} if isinstance(value, tuple) else list(value)
    return None


def _unplain(value: Any) -> Any:
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(value["__tuple__"])
    return value


def build_factory(factory: str, kwargs: dict[str, Any] | None = None, search_path: Path | None = None) -> nn.Module:
    fn = resolve_ref(factory, what="model factory", search_path=search_path)
    try:
        module = fn(**(kwargs or {}))
    except Exception as exc:  # user code: report what it raised
        raise ConfigError(f"model factory {factory}({kwargs or ''}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model factory {factory} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def save_module(module: nn.Module, out_dir: Path, factory: str, kwargs: dict[str, Any] | None = None,
                search_path: Path | None = None) -> list[str]:
    """Write ``weights.pt`` + ``structure.json`` for a factory-built (possibly pruned) module."""
    structure: dict[str, dict[str, Any]] = {}
    for name, mod in module.named_modules():
        attrs = {}
        for k, v in vars(mod).items():
            if k.startswith("_") or k == "training":
                continue
            p = _plain(v)
            if p is not None or v is None:
                attrs[k] = p
        structure[name] = attrs
    doc = {"factory": factory, "kwargs": kwargs or {}, "search_path": str(search_path) if search_path else None,
           "modules": structure}
    (out_dir / "structure.json").write_text(json.dumps(doc, sort_keys=True))
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    torch.save(state, out_dir / "weights.pt")
    return ["weights.pt", "structure.json"]


def _rebuild(root: Path) -> nn.Module:
    doc = json.loads((root / "structure.json").read_text())
    sp = Path(doc["search_path"]) if doc.get("search_path") else None
    module = build_factory(doc["factory"], doc.get("kwargs"), sp)
    mods = dict(module.named_modules())
    for name, attrs in doc["modules"].items():
        mod = mods.get(name)
        if mod is None:
            raise CompressError(f"structure.json names sub-module {name!r} that {doc['factory']} does not build")
        for k, v in attrs.items():
            if k in vars(mod):
                setattr(mod, k, _unplain(v))
    try:
        state = torch.load(root / "weights.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CompressError(f"cannot read weights {root / 'weights.pt'}: {exc}") from exc
    _resize_like(module, state)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressError(f"weights do not fit the model built by {doc['factory']}: {exc}") from exc
    return module


def _resize_like(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, tensor in state.items():
        mod_name, _, attr = key.rpartition(".")
        try:
            mod = module.get_submodule(mod_name)
        except AttributeError:
            continue
        p = mod._parameters.get(attr)
        if p is not None and p.shape != tensor.shape:
            mod._parameters[attr] = nn.Parameter(torch.empty_like(tensor), requires_grad=p.requires_grad)
            continue
        b = mod._buffers.get(attr)
        if b is not None and b.shape != tensor.shape:
            mod._buffers[attr] = torch.empty_like(tensor)


class _Exported(nn.Module):
    """Wraps ``ExportedProgram.module()``, whose ``train()``/``eval()`` raise: it is always in eval mode."""

    def __init__(self, graph_module):
        super().__init__()
        object.__setattr__(self, "_gm", graph_module)  # not a registered child: eval() must not reach it

    def forward(self, *args):
        return self._gm(*args)


def load_torch_file(path: Path) -> nn.Module:
    """A TorchScript file or a ``torch.export`` archive (``.pt2``) as a callable module."""
    path = Path(path)
    try:
        if path.suffix == ".pt2":
            return _Exported(torch.export.load(str(path)).module())
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConfigError(f"cannot load {path} as {'a torch.export archive' if path.suffix == '.pt2' else 'TorchScript'}: {exc}") from exc


def load_module(artifact: Artifact) -> nn.Module:
    """Rebuild the module an artifact holds, in eval mode (a fresh object every call)."""
    if artifact.kind != "torch":
        raise CompressError(f"artifact {artifact.sha256[:12]} is {artifact.kind}, not a torch model")
    fmt = artifact.format
    if fmt == "factory":
        module = _rebuild(artifact.root)
    elif fmt == "torchscript":
        module = load_torch_file(artifact.file("model.ts"))
    elif fmt == "export":
        module = load_torch_file(artifact.file("model.pt2"))
    else:
        raise CompressError(f"unknown torch artifact format {fmt!r}")
    module.eval()
    return module


def is_trainable(artifact: Artifact) -> bool:
    """Whether passes that change the structure or train (prune, distill) can work on it."""
    return artifact.kind == "torch" and artifact.format == "factory"
