"""``export``: PyTorch → ONNX (opset ≥ 17, symbolic batch), onnxslim clean-up, ORT-vs-PyTorch parity.

Exporter choice is deliberate: ``torchscript`` (the legacy ``dynamo=False`` tracer) is the default for
``nn.Module`` and TorchScript inputs — fast, mature, exact opset control; ``dynamo`` (``torch.export``
based, needs onnxscript) is used for ``.pt2`` archives and as the fallback when the tracer fails
(``exporter: auto``). When both fail, the error names the unsupported operator and the sub-module
that calls it. Parity runs ONNX Runtime and PyTorch on real validation samples and fails loudly past
``atol + rtol·|ref|``.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgekit.compress.artifact import Artifact
from edgekit.compress.context import PassContext
from edgekit.compress.inference import predict_onnx, predict_torch
from edgekit.compress.onnxutil import load_onnx, onnx_specs, save_onnx
from edgekit.compress.registry import PassConfig, PassOutput, register_pass
from edgekit.compress.torchio import load_module, load_torch_file
from edgekit.errors import CompressError, ExportError, ParityError
from edgekit.manifest import TensorSpec

__all__ = ["ExportConfig", "check_parity", "export", "locate_failure"]


class ExportConfig(PassConfig):
    pass_name = "export"
    consumes = "torch"

    opset: int = Field(default=17, ge=17, le=23)
    exporter: Literal["auto", "torchscript", "dynamo"] = "auto"
    slim: bool = True
    parity_samples: int = Field(default=64, ge=1)
    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-3, ge=0)


def _dynamic_axes(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for s in (*inputs, *outputs):
        sym = {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
        if sym:
            axes[s.name] = sym
    return axes


def _example_args(art: Artifact, ctx: PassContext, n: int = 2) -> tuple[torch.Tensor, ...]:
    sample = ctx.data.val.head(n)
    return tuple(torch.from_numpy(np.ascontiguousarray(sample.inputs[s.name])) for s in art.inputs)


def _export_once(model, args, path: Path, art: Artifact, cfg: ExportConfig, exporter: str) -> None:
    names_in = [s.name for s in art.inputs]
    names_out = [s.name for s in art.outputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model, args, str(path), dynamo=False, opset_version=cfg.opset, input_names=names_in,
                output_names=names_out, dynamic_axes=_dynamic_axes(art.inputs, art.outputs),
                do_constant_folding=True,
            )
        else:
            prog = torch.onnx.export(
                model, args, dynamo=True, opset_version=max(cfg.opset, 18), input_names=names_in,
                output_names=names_out, dynamic_axes=None if isinstance(model, torch.export.ExportedProgram)
                else _dynamic_axes(art.inputs, art.outputs), optimize=True, verbose=False,
            )
            prog.save(str(path), external_data=False)


_OP = re.compile(r"(aten::[A-Za-z0-9_]+|aten\.[A-Za-z0-9_]+|prim::[A-Za-z0-9_]+)")


def _norm(name: str) -> str:
    return name.split("::")[-1].split(".")[0].lstrip("_")


def locate_failure(model: nn.Module, args: tuple, message: str) -> str:
    """Name the operator (from the exporter's message) and the sub-module that calls it.

    The model runs once eagerly under a function-level and a dispatch-level spy while forward hooks
    track the current sub-module; the first call whose name matches the failing operator names it.
    """
    m = _OP.search(message)
    op = m.group(1).replace("aten.", "aten::") if m else None
    if op is None or not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return f"operator {op}" if op else ""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    target = _norm(op)
    stack: list[str] = []
    found: list[str] = []
    names = {mod: name for name, mod in model.named_modules()}

    def seen(*candidates: str) -> None:
        if not found and stack and any(_norm(c) == target for c in candidates if c):
            found.append(stack[-1])

    class _Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, a=(), kw=None):
            name = getattr(func, "__name__", "")
            prefix = (getattr(func, "__module__", "") or "").split(".")[-1]
            seen(name, f"{prefix}_{name}")
            return func(*a, **(kw or {}))

    class _Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            seen(str(func._schema.name))
            return func(*a, **(kw or {}))

    def enter(m_, _inputs) -> None:
        stack.append(names[m_])

    def leave(_m, _inputs, _output) -> None:  # must return None: a value would replace the output
        stack.pop()

    hooks = []
    for mod in names:
        hooks.append(mod.register_forward_pre_hook(enter))
        hooks.append(mod.register_forward_hook(leave))
    try:
        with torch.no_grad(), _Functions(), _Dispatch():
            model(*args)
    except Exception:  # naming is best effort; the export error is what matters
        pass
    finally:
        for h in hooks:
            h.remove()
    if not found:
        return f"operator {op}"
    path = found[0]
    mod = model.get_submodule(path) if path else model
    return f"operator {op} in module '{path or '<root>'}' ({type(mod).__name__})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((ln for ln in text if ln.strip()), type(exc).__name__)[:300]


def check_parity(onnx_path: Path, module: nn.Module, art: Artifact, ctx: PassContext, cfg: ExportConfig) -> dict:
    """Compare ONNX Runtime with PyTorch on real validation samples; raise ParityError past tolerance."""
    sample = ctx.data.val.head(cfg.parity_samples)
    names = [s.name for s in art.outputs]
    ref = predict_torch(module, sample, art.inputs, names)
    got = predict_onnx(onnx_path, sample, threads=ctx.threads)
    worst = 0.0
    for name in names:
        a, b = np.asarray(got[name], np.float64), np.asarray(ref[name], np.float64)
        if a.shape != b.shape:
            raise ParityError(f"ONNX output {name!r} has shape {list(a.shape)}, PyTorch {list(b.shape)}")
        diff = np.abs(a - b)
        worst = max(worst, float(diff.max(initial=0.0)))
        bad = diff > cfg.atol + cfg.rtol * np.abs(b)
        if bad.any():
            raise ParityError(
                f"ONNX Runtime disagrees with PyTorch on output {name!r}: {int(bad.sum())} of {bad.size} values "
                f"past atol={cfg.atol} rtol={cfg.rtol} (max abs diff {diff.max():.3g}) on {len(sample)} real samples"
            )
    return {"parity_max_abs_diff": worst, "parity_samples": float(len(sample))}


@register_pass(ExportConfig)
def export(art: Artifact, cfg: ExportConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    t0 = time.perf_counter()
    path = out_dir / "model.onnx"
    if art.format == "export":
        model: object = torch.export.load(str(art.file("model.pt2")))
        order = ["dynamo"]
        module = load_torch_file(art.file("model.pt2"))
    else:
        module = load_module(art)
        model = module
        order = {"auto": ["torchscript", "dynamo"], "torchscript": ["torchscript"], "dynamo": ["dynamo"]}[cfg.exporter]
    args = _example_args(art, ctx)
    errors: list[str] = []
    used = None
    for exporter in order:
        try:
            _export_once(model, args, path, art, cfg, exporter)
            used = exporter
            break
        except Exception as exc:  # exporters raise many types (OnnxExporterError, TorchExportError, ...)
            where = locate_failure(module, args, str(exc))
            errors.append(f"{exporter} exporter: {where + ': ' if where else ''}{_first_line(exc)}")
            path.unlink(missing_ok=True)
    if used is None:
        raise ExportError("cannot export the model to ONNX — " + " | ".join(errors))
    proto = load_onnx(path)
    notes = [f"{e} (fell back)" for e in errors]
    if cfg.slim:
        try:
            import onnxslim

            proto = onnxslim.slim(proto)
        except Exception as exc:  # onnxslim is a clean-up: keep the unslimmed graph and say so
            notes.append(f"onnxslim failed, graph kept as exported: {_first_line(exc)}")
    save_onnx(proto, path)
    for f in out_dir.glob("*.data"):
        f.unlink()
    ins, outs = onnx_specs(load_onnx(path))
    if [s.name for s in ins] != [s.name for s in art.inputs]:
        raise CompressError(f"exported inputs {[s.name for s in ins]} differ from the declared {[s.name for s in art.inputs]}")
    metrics = check_parity(path, module, art, ctx, cfg)
    new = Artifact.create("onnx", out_dir, ["model.onnx"], list(art.inputs),
                          [TensorSpec(name=o.name, dtype=o.dtype, shape=d.shape) for o, d in zip(outs, art.outputs, strict=True)],
                          {"format": "onnx", "precision": "fp32", "factory": art.meta.get("factory")})
    return PassOutput(new, params={**cfg.model_dump(), "exporter_used": used},
                      metrics={**metrics, "export_s": time.perf_counter() - t0}, notes=notes)


