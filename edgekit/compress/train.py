"""A small, deterministic training loop shared by fine-tuning (prune), distillation and QAT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.compress.context import PassContext
from edgekit.compress.data import ArraySet
from edgekit.compress.inference import outputs_tuple
from edgekit.manifest import TensorSpec

__all__ = ["LossFn", "distill_loss", "fit", "task_loss"]

#: (student outputs, batch labels or None, teacher outputs or None) -> scalar loss
LossFn = Callable[[tuple[torch.Tensor, ...], torch.Tensor | None, tuple[torch.Tensor, ...] | None], torch.Tensor]


def task_loss(outs, labels, teacher_outs) -> torch.Tensor:
    """Cross-entropy on labels; without labels, MSE to the source model's outputs."""
    if labels is not None:
        return F.cross_entropy(outs[0].reshape(len(labels), -1), labels)
    return sum(F.mse_loss(o, t) for o, t in zip(outs, teacher_outs, strict=True))


def distill_loss(temperature: float, alpha: float) -> LossFn:
    """Hinton KD: ``alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−alpha)·CE(s, y)`` (MSE when unlabeled)."""

    def loss(outs, labels, teacher_outs):
        s, t = outs[0].reshape(outs[0].shape[0], -1), teacher_outs[0].reshape(outs[0].shape[0], -1)
        if labels is None:
            return sum(F.mse_loss(o, tt) for o, tt in zip(outs, teacher_outs, strict=True))
        kd = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), reduction="batchmean",
                      log_target=True) * temperature**2
        return alpha * kd + (1 - alpha) * F.cross_entropy(s, labels)

    return loss


def _augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind != "shift" or x.dim() != 4:
        return x
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x


def fit(model: nn.Module, data: ArraySet, inputs: list[TensorSpec] | tuple[TensorSpec, ...], ctx: PassContext, *,
        epochs: int, lr: float, batch_size: int = 64, loss_fn: LossFn = task_loss,
        teacher_outputs: list[np.ndarray] | None = None, teacher: nn.Module | None = None,
        extra_loss: Callable[[], torch.Tensor] | None = None, extra_params: list[nn.Parameter] | None = None,
        augment: Literal["none", "shift"] = "none", description: str = "training", weight_decay: float = 1e-4) -> nn.Module:
    """Train ``model`` in place (AdamW + one-cycle schedule) and return it in eval mode.

    Teacher outputs come precomputed (``teacher_outputs``, aligned with ``data``) or from a live
    ``teacher`` (needed for feature matching and augmentation). ``extra_loss`` adds e.g. feature terms.
    """
    if epochs <= 0:
        return model.eval()
    torch.manual_seed(ctx.seed)
    gen = torch.Generator().manual_seed(ctx.seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params or [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = len(data)
    steps_per_epoch = max(1, (n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    labels = None if data.labels is None else torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    xs = [torch.from_numpy(np.ascontiguousarray(data.inputs[s.name])) for s in inputs]
    touts = [torch.from_numpy(t) for t in teacher_outputs] if teacher_outputs is not None else None
    if teacher is not None:
        teacher.eval()
    with ctx.progress(description, total=epochs * steps_per_epoch) as advance:
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                if len(idx) < 2:
                    continue
                args = [x[idx] for x in xs]
                if augment != "none":
                    args = [_augment(a, augment, gen) if a.is_floating_point() else a for a in args]
                t_out = None
                if teacher is not None:
                    with torch.no_grad():
                        t_out = outputs_tuple(teacher(*args))
                elif touts is not None:
                    t_out = tuple(t[idx] for t in touts)
                outs = outputs_tuple(model(*args))
                loss = loss_fn(outs, None if labels is None else labels[idx], t_out)
                if extra_loss is not None:
                    loss = loss + extra_loss()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                advance(1)
    return model.eval()
