"""``qat``: quantization-aware fine-tuning, for when post-training INT8 misses the budget.

The PyTorch model is fine-tuned with INT8 fake quantization in the loop — symmetric per-channel on
Conv/Linear weights (through a parametrization; for a Conv followed by BatchNorm, on the folded weight
ONNX Runtime will see, with the BN statistics frozen) and symmetric per-tensor on activations (EMA of
the observed range), both with the straight-through estimator — against the source model's soft
targets and the labels. The weights come out baked onto their INT8 grid, so the following ``export`` +
``quantize`` (static QDQ, S8S8) reproduces what training saw and the accuracy lost to quantization
is largely recovered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from edgekit.compress.artifact import Artifact
from edgekit.compress.context import PassContext
from edgekit.compress.inference import predict_torch
from edgekit.compress.registry import PassConfig, PassOutput, register_pass
from edgekit.compress.torchio import is_trainable, load_module, save_module
from edgekit.compress.train import distill_loss, fit, task_loss
from edgekit.errors import CompressError

__all__ = ["QATConfig", "conv_bn_pairs", "fake_quantize_", "qat"]


class QATConfig(PassConfig):
    pass_name = "qat"
    consumes = "torch"

    epochs: int = Field(default=5, ge=1)
    lr: float = Field(default=5e-4, gt=0)
    batch_size: int = Field(default=64, ge=2)
    #: learn from the source model's soft targets (else labels only)
    distill: bool = True
    temperature: float = Field(default=4.0, gt=0)
    ema: float = Field(default=0.9, gt=0, lt=1)


def _fq_per_channel(w: torch.Tensor) -> torch.Tensor:
    flat = w.detach().reshape(w.shape[0], -1).abs().amax(1).clamp(min=1e-8)
    scale = (flat / 127.0).to(torch.float32)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class _WeightFakeQuant(nn.Module):
    """Symmetric per-output-channel INT8 fake quantization of a weight tensor.

    With a following BatchNorm (``bn``), the weight ONNX Runtime will quantize is the *folded* one,
    ``w·γ/σ``: that is what gets fake-quantized, then divided back, so after the export folds the
    BatchNorm the Conv weight sits exactly on the grid training saw.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm | None = None):
        super().__init__()
        object.__setattr__(self, "bn", bn)  # not a child: the BN stays where the model has it

    def _fold(self, w: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        k = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            k = k * bn.weight
        return k.reshape(-1, *([1] * (w.dim() - 1)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bn is None or self.bn.running_var is None:
            return _fq_per_channel(w)
        k = self._fold(w)
        k = torch.where(k.abs() < 1e-12, torch.full_like(k, 1e-12), k)
        return _fq_per_channel(w * k) / k


def conv_bn_pairs(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """Conv → BatchNorm pairs where the BN is the Conv's only consumer (found with torch.fx)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # not fx-traceable (data-dependent control flow): no folding-aware QAT
        return {}
    mods = dict(gm.named_modules())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.modules.conv._ConvNd):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
                mods.get(users[0].target), nn.modules.batchnorm._BatchNorm):
            pairs[model.get_submodule(node.target)] = model.get_submodule(users[0].target)
    return pairs


class _ActFakeQuant:
    """A forward hook: symmetric per-tensor INT8 fake quantization of a module's output."""

    def __init__(self, ema: float):
        self.ema = ema
        self.absmax: float | None = None

    def __call__(self, module, inputs, out):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        if module.training or self.absmax is None:
            cur = float(out.detach().abs().max())
            self.absmax = cur if self.absmax is None else self.ema * self.absmax + (1 - self.ema) * cur
        scale = max(self.absmax, 1e-8) / 127.0
        return torch.fake_quantize_per_tensor_affine(out, scale, 0, -128, 127)


_ACT_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.ReLU, nn.ReLU6, nn.modules.batchnorm._BatchNorm,
              nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._MaxPoolNd, nn.Hardswish, nn.SiLU)


def _frozen(module, _inputs) -> None:
    module.training = False  # BN statistics stay fixed during QAT, so the folded weight is stable


def fake_quantize_(model: nn.Module, ema: float = 0.9) -> list:
    """Insert fake quantization in place (BN-folding aware); returns the hook handles to remove."""
    pairs = conv_bn_pairs(model)
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", _WeightFakeQuant(pairs.get(m)))
    handles = [bn.register_forward_pre_hook(_frozen) for bn in pairs.values()]
    return handles + [m.register_forward_hook(_ActFakeQuant(ema)) for m in model.modules() if isinstance(m, _ACT_TYPES)]


def _bake(model: nn.Module, handles: list) -> None:
    for h in handles:
        h.remove()
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


@register_pass(QATConfig)
def qat(art: Artifact, cfg: QATConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    if not is_trainable(art):
        raise CompressError("qat needs a model given as 'module:factory' + state dict")
    t0 = time.perf_counter()
    model = load_module(art)
    train = ctx.data.train
    names = [s.name for s in art.outputs]
    teacher_src = ctx.source if (cfg.distill and ctx.source is not None and ctx.source.kind == "torch") else art
    t_out = list(predict_torch(load_module(teacher_src), train, art.inputs, names).values())
    handles = fake_quantize_(model, cfg.ema)
    loss = distill_loss(cfg.temperature, 0.7) if cfg.distill and train.labels is not None else task_loss
    fit(model, train, art.inputs, ctx, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, loss_fn=loss,
        teacher_outputs=t_out, description="quantization-aware fine-tune")
    _bake(model, handles)
    doc = json.loads(art.file("structure.json").read_text())
    files = save_module(model, out_dir, doc["factory"], doc.get("kwargs"),
                        Path(doc["search_path"]) if doc.get("search_path") else None)
    new = Artifact.create("torch", out_dir, files, list(art.inputs), list(art.outputs), {**art.meta, "qat": True})
    return PassOutput(new, params=cfg.model_dump(), metrics={"qat_s": time.perf_counter() - t0})
