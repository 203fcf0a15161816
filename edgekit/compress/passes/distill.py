"""``distill``: knowledge distillation from the input model (teacher) into a smaller student.

The student is a ``module:factory`` (with ``student_kwargs``, e.g. a width), or it is **derived from the
teacher** by structured pruning (``derive_ratio``) and then distilled back (prune-then-distill). The
loss is soft targets at a temperature plus hard labels (``alpha`` weights the soft part); unlabeled
data distils on the teacher's outputs alone. Optional feature matching adds an MSE between named
teacher and student sub-module outputs through a learned 1×1 adapter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from edgekit.compress.artifact import Artifact
from edgekit.compress.context import PassContext
from edgekit.compress.data import ArraySet
from edgekit.compress.inference import predict_torch
from edgekit.compress.passes.prune import PruneConfig, prune_module
from edgekit.compress.registry import PassConfig, PassOutput, register_pass
from edgekit.compress.torchio import build_factory, is_trainable, load_module, save_module
from edgekit.compress.train import distill_loss, fit
from edgekit.errors import CompressError, ConfigError

__all__ = ["DistillConfig", "distill"]


class DistillConfig(PassConfig):
    pass_name = "distill"
    consumes = "torch"

    student: str | None = None
    student_kwargs: dict[str, int | float | str | bool] = Field(default_factory=dict)
    #: derive the student from the teacher by pruning this fraction of channels, then distil back
    derive_ratio: float | None = Field(default=None, gt=0, lt=1)
    derive_method: Literal["magnitude", "group_norm"] = "magnitude"
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=64, ge=2)
    augment: Literal["none", "shift"] = "none"
    #: with ``augment: shift``: shifted copies of the training set whose teacher outputs are computed
    #: once up front (offline distillation: no teacher forward per step)
    augment_copies: int = Field(default=3, ge=0, le=16)
    #: pairs [teacher_module_name, student_module_name] whose outputs are matched (MSE)
    feature_pairs: list[tuple[str, str]] = Field(default_factory=list)
    feature_weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        if (self.student is None) == (self.derive_ratio is None):
            raise ValueError("give exactly one of 'student' (module:factory) or 'derive_ratio'")
        return self


class _FeatureMatch:
    """Hooks named sub-modules of teacher and student; MSE between their outputs via 1×1 adapters."""

    def __init__(self, teacher: nn.Module, student: nn.Module, pairs, args):
        self.t_feats: dict[int, torch.Tensor] = {}
        self.s_feats: dict[int, torch.Tensor] = {}
        self.hooks = []
        tmods, smods = dict(teacher.named_modules()), dict(student.named_modules())
        for i, (tn, sn) in enumerate(pairs):
            if tn not in tmods:
                raise ConfigError(f"distill: feature_pairs names teacher module {tn!r}, which does not exist")
            if sn not in smods:
                raise ConfigError(f"distill: feature_pairs names student module {sn!r}, which does not exist")
            self.hooks.append(tmods[tn].register_forward_hook(self._saver(self.t_feats, i)))
            self.hooks.append(smods[sn].register_forward_hook(self._saver(self.s_feats, i)))
        with torch.no_grad():
            teacher(*args)
            student.eval()
            student(*args)
        self.adapters = nn.ModuleList()
        for i in range(len(pairs)):
            t, s = self.t_feats[i], self.s_feats[i]
            if t.dim() == 4:
                self.adapters.append(nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False))
            else:
                self.adapters.append(nn.Linear(s.shape[-1], t.shape[-1], bias=False))

    @staticmethod
    def _saver(store, i):
        def hook(_m, _inp, out):
            store[i] = out[0] if isinstance(out, tuple) else out
        return hook

    def loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for i, ad in enumerate(self.adapters):
            s, t = ad(self.s_feats[i]), self.t_feats[i].detach()
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            total = total + F.mse_loss(s, t)
        return total

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def shifted_copies(data: ArraySet, copies: int, seed: int, max_shift: int = 2) -> ArraySet:
    """``data`` plus ``copies`` randomly shifted versions of every image (4-D float inputs only)."""
    rng = np.random.default_rng(seed)
    inputs = {k: [v] for k, v in data.inputs.items()}
    n = len(data)
    for _ in range(copies):
        shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
        for k, v in data.inputs.items():
            if v.ndim != 4 or v.dtype.kind != "f":
                inputs[k].append(v)
                continue
            out = np.empty_like(v)
            for dy, dx in {tuple(s) for s in shifts.tolist()}:
                idx = np.where((shifts[:, 0] == dy) & (shifts[:, 1] == dx))[0]
                out[idx] = np.roll(v[idx], (dy, dx), axis=(2, 3))
            inputs[k].append(out)
    labels = None if data.labels is None else np.concatenate([data.labels] * (copies + 1))
    return ArraySet({k: np.concatenate(v) for k, v in inputs.items()}, labels)


@register_pass(DistillConfig)
def distill(art: Artifact, cfg: DistillConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    t0 = time.perf_counter()
    teacher = load_module(art)
    train = ctx.data.train
    args = tuple(torch.from_numpy(np.ascontiguousarray(train.head(2).inputs[s.name])) for s in art.inputs)
    torch.manual_seed(ctx.seed)  # the student's initial weights must not depend on what ran before
    if cfg.student:
        student = build_factory(cfg.student, dict(cfg.student_kwargs), ctx.base_dir)
        factory, kwargs, search = cfg.student, dict(cfg.student_kwargs), ctx.base_dir
    else:
        if not is_trainable(art):
            raise CompressError("distill: deriving a student needs a teacher given as 'module:factory' + state dict")
        student = load_module(art)
        prune_module(student, args, PruneConfig(method=cfg.derive_method, ratio=cfg.derive_ratio), ctx)
        doc = json.loads(art.file("structure.json").read_text())
        factory, kwargs = doc["factory"], doc.get("kwargs") or {}
        search = Path(doc["search_path"]) if doc.get("search_path") else None
    try:
        with torch.no_grad():
            student.eval()
            student(*args)
    except Exception as exc:  # user model code
        raise ConfigError(f"distill: the student does not accept the teacher's inputs: {type(exc).__name__}: {exc}") from exc

    names = [s.name for s in art.outputs]
    feats = _FeatureMatch(teacher, student, cfg.feature_pairs, args) if cfg.feature_pairs else None
    augment = cfg.augment
    if augment == "shift" and feats is None and cfg.augment_copies:
        train = shifted_copies(train, cfg.augment_copies, ctx.seed)
        augment = "none"
    live = feats is not None or augment != "none"
    t_out = None if live else list(predict_torch(teacher, train, art.inputs, names).values())
    try:
        fit(student, train, art.inputs, ctx, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
            loss_fn=distill_loss(cfg.temperature, cfg.alpha), teacher_outputs=t_out,
            teacher=teacher if live else None, augment=augment, description="distilling",
            extra_loss=(lambda: cfg.feature_weight * feats.loss()) if feats else None,
            extra_params=list(feats.adapters.parameters()) if feats else None)
    finally:
        if feats:
            feats.close()
    files = save_module(student, out_dir, factory, kwargs, search)
    new = Artifact.create("torch", out_dir, files, list(art.inputs), list(art.outputs),
                          {"format": "factory", "factory": factory, "student_of": art.sha256})
    params_t = sum(p.numel() for p in teacher.parameters())
    params_s = sum(p.numel() for p in student.parameters())
    return PassOutput(new, params=cfg.model_dump(mode="json"),
                      metrics={"teacher_params": float(params_t), "student_params": float(params_s),
                               "distill_s": time.perf_counter() - t0})
