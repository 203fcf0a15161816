"""``evaluate``: quality on held-out data, latency p50/p95 on the target runtime, size, params, MACs.

Latency is measured through ``runtimes`` (``runtimes.bench.benchmark``) at batch 1 on a real sample:
ONNX on the runtime the target profile prefers (ONNX Runtime on CPU profiles), PyTorch models eagerly
through the torch reference backend. The pipeline runs this after every pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from edgekit.compress.artifact import Artifact
from edgekit.compress.context import PassContext
from edgekit.compress.inference import predict_onnx, predict_torch
from edgekit.compress.onnxutil import count_onnx, load_onnx
from edgekit.compress.registry import PassConfig, PassOutput, register_pass
from edgekit.compress.torchio import load_module
from edgekit.errors import BackendUnavailableError
from runtimes.bench import benchmark
from runtimes.registry import runtime_for_profile

__all__ = ["EvaluateConfig", "evaluate", "evaluate_artifact", "measure_latency"]


class EvaluateConfig(PassConfig):
    pass_name = "evaluate"
    transforms = False

    iterations: int = Field(default=200, ge=1)
    warmup: int = Field(default=20, ge=0)


def _feeds(art: Artifact, ctx: PassContext) -> dict[str, np.ndarray]:
    sample = ctx.data.val.head(1)
    return {s.name: np.ascontiguousarray(sample.inputs[s.name]) for s in art.inputs}


def measure_latency(art: Artifact, ctx: PassContext, *, iterations: int | None = None, warmup: int = 20,
                    module=None) -> dict[str, float]:
    """p50/p95 ms at batch 1 on the target runtime (ONNX) or PyTorch eager (torch artifacts)."""
    iterations = iterations or ctx.bench_iterations
    warmup = min(warmup, iterations)
    feeds = _feeds(art, ctx)
    threads = ctx.threads or ctx.profile.threads
    if art.kind == "onnx":
        rt = runtime_for_profile(ctx.profile)
        with rt.load(art.onnx_path, ctx.profile, threads=threads) as session:
            res = benchmark(session, feeds, runtime=rt.name, warmup=warmup, iterations=iterations)
    else:
        import torch

        from runtimes.torchref import TorchRuntime

        prev = torch.get_num_threads()
        session = TorchRuntime.from_module(module if module is not None else load_module(art), list(art.inputs),
                                           list(art.outputs), threads=threads)
        try:
            res = benchmark(session, feeds, runtime="torch-eager", warmup=warmup, iterations=iterations)
        finally:
            torch.set_num_threads(prev)
    return {"p50_ms": res.p50_ms, "p95_ms": res.p95_ms}


def _torch_counts(module, art: Artifact, ctx: PassContext) -> dict[str, float]:
    import torch

    params = float(sum(p.numel() for p in module.parameters()))
    try:
        import torch_pruning as tp

        args = tuple(torch.from_numpy(v) for v in _feeds(art, ctx).values())
        macs, _ = tp.utils.count_ops_and_params(module, args[0] if len(args) == 1 else args)
        return {"params": params, "macs": float(macs)}
    except Exception:  # MAC counting is best effort (TorchScript, exotic ops)
        return {"params": params}


def evaluate_artifact(art: Artifact, ctx: PassContext, *, latency: bool = True,
                      iterations: int | None = None) -> dict[str, float]:
    """Every metric of one artifact, as floats (the report's and the manifest's numbers)."""
    out: dict[str, float] = {}
    names = [s.name for s in art.outputs]
    if art.kind == "onnx":
        preds = predict_onnx(art.onnx_path, ctx.val, threads=ctx.threads)
        out.update(count_onnx(load_onnx(art.onnx_path)))
        module = None
    else:
        module = load_module(art)
        preds = predict_torch(module, ctx.val, art.inputs, names)
        out.update(_torch_counts(module, art, ctx))
    out[ctx.metric.name] = ctx.score(preds)
    out["size_mb"] = art.size_bytes() / 1e6
    if latency:
        try:
            out.update(measure_latency(art, ctx, iterations=iterations, module=module))
        except BackendUnavailableError as exc:
            ctx.warn(f"latency not measured: {exc}")
    return out


@register_pass(EvaluateConfig)
def evaluate(art: Artifact, cfg: EvaluateConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    return PassOutput(art, params=cfg.model_dump(), metrics=evaluate_artifact(art, ctx, iterations=cfg.iterations))
