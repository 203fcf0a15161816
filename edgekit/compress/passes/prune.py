"""``prune``: structured channel pruning with torch-pruning, or unstructured magnitude sparsity.

Structured pruning removes whole channels through torch-pruning's dependency graph, so residual
additions, depthwise/grouped convolutions and concatenations stay consistent and the result is really
smaller and faster. Importance: ``magnitude`` (L1 of each channel's weights), ``taylor`` (first-order
loss change, from gradients on real batches) or ``group_norm`` (L2 over the whole coupled group).
``global_pruning`` ranks channels across layers; ``iterations`` prunes in steps with optional
fine-tuning after each. The classifier head (every Linear/Conv whose output is a model output) and
``ignored_layers`` (module-name patterns) are never pruned; attention blocks are left whole.
``unstructured`` zeroes the smallest weights (global L1) for sparsity-aware runtimes.
"""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgekit.compress.artifact import Artifact
from edgekit.compress.context import PassContext
from edgekit.compress.inference import outputs_tuple, predict_torch
from edgekit.compress.registry import PassConfig, PassOutput, register_pass
from edgekit.compress.torchio import is_trainable, load_module, save_module
from edgekit.compress.train import distill_loss, fit, task_loss
from edgekit.errors import CompressError, ConfigError

__all__ = ["PruneConfig", "find_heads", "prune", "prune_module"]


class PruneConfig(PassConfig):
    pass_name = "prune"
    consumes = "torch"

    method: Literal["magnitude", "taylor", "group_norm", "unstructured"] = "magnitude"
    #: fraction of channels (structured) or weights (unstructured) to remove
    ratio: float = Field(default=0.5, gt=0, lt=1)
    global_pruning: bool = False
    #: the most any single layer may lose (global pruning otherwise can empty a layer)
    max_layer_ratio: float = Field(default=0.9, gt=0, lt=1)
    iterations: int = Field(default=1, ge=1, le=50)
    finetune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=2)
    #: fine-tune against the source model's soft targets instead of labels alone
    finetune_distill: bool = False
    temperature: float = Field(default=4.0, gt=0)
    ignored_layers: list[str] = Field(default_factory=list)
    round_to: int | None = Field(default=None, ge=1)
    augment: Literal["none", "shift"] = "none"


def _example(art: Artifact, ctx: PassContext, n: int = 2) -> tuple[torch.Tensor, ...]:
    s = ctx.data.train.head(n)
    return tuple(torch.from_numpy(np.ascontiguousarray(s.inputs[spec.name])) for spec in art.inputs)


def find_heads(model: nn.Module, args: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """Linear/Conv modules whose output is a model output (else the last one that ran)."""
    # Keep every hooked output alive: comparing ``id()`` of tensors already freed is unsound, because
    # CPython reuses the id of a freed intermediate for a later tensor (seen: a hidden conv taken for
    # the head, so it escaped pruning).
    order: list[tuple[nn.Module, object]] = []
    hooks = [m.register_forward_hook(lambda m_, _i, o: order.append((m_, o)))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            outs = outputs_tuple(model(*args))
    finally:
        for h in hooks:
            h.remove()
    heads = [m for m, o in order if any(o is out for out in outs)]
    return heads or ([order[-1][0]] if order else [])


def _ignored(model: nn.Module, patterns: list[str], heads: list[nn.Module]) -> list[nn.Module]:
    out = list(heads)
    names = dict(model.named_modules())
    for pat in patterns:
        hit = [m for n, m in names.items() if n and fnmatch.fnmatch(n, pat)]
        if not hit:
            raise ConfigError(f"prune: ignored_layers pattern {pat!r} matches no module; modules: "
                              f"{', '.join(list(n for n in names if n)[:20])}")
        out.extend(hit)
    # Attention projections are coupled by head layout; keep them whole.
    out.extend(m for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    return out


def _importance(method: str):
    import torch_pruning as tp

    if method == "magnitude":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def prune_module(model: nn.Module, args: tuple[torch.Tensor, ...], cfg: PruneConfig, ctx: PassContext,
                 *, finetune=None, grad_batch=None) -> dict[str, float]:
    """Prune ``model`` in place; ``finetune()`` runs after each step, ``grad_batch()`` feeds Taylor."""
    params_before = sum(p.numel() for p in model.parameters())
    heads = find_heads(model, args)
    ignored = _ignored(model, cfg.ignored_layers, heads)
    if cfg.method == "unstructured":
        import torch.nn.utils.prune as tprune

        targets = [(m, "weight") for m in model.modules()
                   if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m not in ignored]
        if not targets:
            raise CompressError("prune: no Linear/Conv weights to prune (all ignored)")
        for step in range(1, cfg.iterations + 1):
            amount = cfg.ratio * step / cfg.iterations
            tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=amount)
            for m, name in targets:
                tprune.remove(m, name)
            if finetune:
                masks = [(m.weight != 0).float() for m, _ in targets]
                finetune()
                with torch.no_grad():
                    for (m, _), mask in zip(targets, masks, strict=True):
                        m.weight.mul_(mask)
        zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
        total = sum(m.weight.numel() for m, _ in targets)
        return {"sparsity": zeros / total, "params_before": float(params_before),
                "params_after": float(params_before - zeros)}

    import torch_pruning as tp

    try:
        pruner = tp.pruner.MetaPruner(
            model, args[0] if len(args) == 1 else args, importance=_importance(cfg.method),
            global_pruning=cfg.global_pruning, pruning_ratio=cfg.ratio, max_pruning_ratio=cfg.max_layer_ratio,
            iterative_steps=cfg.iterations, ignored_layers=ignored, round_to=cfg.round_to,
        )
        for _ in range(cfg.iterations):
            if cfg.method == "taylor":
                model.zero_grad()
                loss = grad_batch(model) if grad_batch else None
                if loss is None:
                    raise CompressError("prune: taylor importance needs data to compute gradients")
                loss.backward()
            pruner.step()
            if cfg.method == "taylor":
                model.zero_grad(set_to_none=True)
            if finetune:
                finetune()
    except CompressError:
        raise
    except Exception as exc:  # torch-pruning raises assorted errors on graphs it cannot trace
        raise CompressError(f"torch-pruning failed on {type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    with torch.no_grad():
        model(*args)  # the pruned graph must still run
    params_after = sum(p.numel() for p in model.parameters())
    return {"params_before": float(params_before), "params_after": float(params_after),
            "param_ratio": params_after / max(params_before, 1)}


@register_pass(PruneConfig)
def prune(art: Artifact, cfg: PruneConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    if not is_trainable(art):
        raise CompressError("prune needs a model given as 'module:factory' + state dict; TorchScript and .pt2 "
                            "models can only be exported and quantized")
    t0 = time.perf_counter()
    model = load_module(art)
    args = _example(art, ctx)
    train = ctx.data.train
    out_names = [s.name for s in art.outputs]
    teacher_outs = None
    loss = task_loss
    if cfg.finetune_distill or ctx.data.train.labels is None:
        teacher = load_module(ctx.source) if ctx.source is not None else load_module(art)
        teacher_outs = list(predict_torch(teacher, train, art.inputs, out_names).values())
        if cfg.finetune_distill:
            loss = distill_loss(cfg.temperature, 0.7)

    def finetune() -> None:
        if cfg.finetune_epochs:
            fit(model, train, art.inputs, ctx, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                loss_fn=loss, teacher_outputs=teacher_outs, augment=cfg.augment, description="pruning fine-tune")

    def grad_batch(m: nn.Module):
        b = train.head(min(256, len(train)))
        xs = [torch.from_numpy(b.inputs[s.name]) for s in art.inputs]
        outs = outputs_tuple(m(*xs))
        labels = None if b.labels is None else torch.from_numpy(b.labels.astype(np.int64))
        t = None if teacher_outs is None else tuple(torch.from_numpy(x[: len(b)]) for x in teacher_outs)
        return task_loss(outs, labels, t)

    model.train(cfg.method == "taylor")
    stats = prune_module(model, args, cfg, ctx, finetune=finetune, grad_batch=grad_batch)
    doc = json.loads(art.file("structure.json").read_text())
    files = save_module(model, out_dir, doc["factory"], doc.get("kwargs"),
                        Path(doc["search_path"]) if doc.get("search_path") else None)
    new = Artifact.create("torch", out_dir, files, list(art.inputs), list(art.outputs),
                          {**art.meta, "format": "factory", "pruned": cfg.method})
    return PassOutput(new, params=cfg.model_dump(), metrics={**stats, "prune_s": time.perf_counter() - t0})
