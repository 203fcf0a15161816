"""The bearing-fault classifier: a 1-D CNN over the order-tracked spectra plus the streamed condition indicators.

``bearing_cnn(width=...)`` is the factory ``edgekit compress`` rebuilds models from, and ``macro_f1`` the
metric its budget is read in. The file is self-contained (torch and numpy only): ``train_teacher.py``
copies it next to the weights so the recipes there say ``model:bearing_cnn``. The "cloud" teacher is ``width=64``: four
conv-conv-pool stages over the two spectra channels (envelope, plain) along the order axis, global
average pooling, and a small branch for the condition indicators (log-scaled levels, kurtosis, crest
factor), so the network sees what a vibration analyst looks at.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["INPUT_NAMES", "N_CLASSES", "BearingCNN", "BearingStudent", "bearing_cnn", "bearing_student", "macro_f1"]

#: the model's inputs in call order (``data.FEATURES`` after the spectra; a test keeps the two in step)
INPUT_NAMES = ("spectrum", "rms", "kurtosis", "crest_factor", "band_low", "band_mid", "band_high")
N_CLASSES = 6


def _stage(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(),
        nn.Conv1d(c_out, c_out, k, padding=k // 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(),
        nn.MaxPool1d(2),
    )


def _log_features(*feats: torch.Tensor) -> torch.Tensor:
    """[batch, 6] log-scaled indicators: the levels span decades; kurtosis and crest factor are ≥ 1.

    One Concat + Add + Log in the exported graph (not one Log per input): at batch 1 a small model's
    latency is mostly per-node overhead.
    """
    return torch.log(torch.cat(feats, dim=1) + 1e-4)


class BearingCNN(nn.Module):
    """Inputs: ``spectrum`` [batch, 2, 256] and one [batch, 1] tensor per feature; output: class logits."""

    def __init__(self, width: int = 64, n_classes: int = N_CLASSES, dropout: float = 0.2):
        super().__init__()
        w = width
        self.stages = nn.Sequential(
            _stage(2, w // 2, 7),
            _stage(w // 2, w, 5),
            _stage(w, 2 * w, 5),
            _stage(2 * w, 2 * w, 3),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        n_feat = len(INPUT_NAMES) - 1
        self.feature_norm = nn.BatchNorm1d(n_feat)
        self.feature_mlp = nn.Sequential(nn.Linear(n_feat, 32), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * w + 32, 128), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(128, n_classes))

    def forward(self, spectrum: torch.Tensor, rms: torch.Tensor, kurtosis: torch.Tensor, crest_factor: torch.Tensor,
                band_low: torch.Tensor, band_mid: torch.Tensor, band_high: torch.Tensor) -> torch.Tensor:
        z = self.pool(self.stages(spectrum)).flatten(1)
        f = self.feature_mlp(self.feature_norm(_log_features(rms, kurtosis, crest_factor, band_low, band_mid, band_high)))
        return self.head(torch.cat([z, f], dim=1))


class BearingStudent(nn.Module):
    """The edge student: four convs with aggressive pooling (receptive field ≈ 10 orders, enough to see a
    defect's harmonic spacing), a small indicator branch, one linear head: few graph nodes, since at
    batch 1 on a CPU a tiny model's latency is mostly per-node overhead."""

    def __init__(self, width: int = 16, n_classes: int = N_CLASSES):
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            nn.Conv1d(2, w, 7, padding=3, bias=False), nn.BatchNorm1d(w), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(w, 2 * w, 5, padding=2, bias=False), nn.BatchNorm1d(2 * w), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(2 * w, 2 * w, 5, padding=2, bias=False), nn.BatchNorm1d(2 * w), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm1d(2 * w), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        # no BatchNorm on the indicators here: a lone BatchNormalization node cannot be folded into a
        # conv and trips INT8 quantization; the linear layer learns the scaling
        self.feature_mlp = nn.Sequential(nn.Linear(len(INPUT_NAMES) - 1, 16), nn.ReLU())
        self.head = nn.Linear(2 * w + 16, n_classes)

    def forward(self, spectrum: torch.Tensor, rms: torch.Tensor, kurtosis: torch.Tensor, crest_factor: torch.Tensor,
                band_low: torch.Tensor, band_mid: torch.Tensor, band_high: torch.Tensor) -> torch.Tensor:
        z = self.pool(self.convs(spectrum)).flatten(1)
        f = self.feature_mlp(_log_features(rms, kurtosis, crest_factor, band_low, band_mid, band_high))
        return self.head(torch.cat([z, f], dim=1))


def bearing_student(width: int = 16, n_classes: int = N_CLASSES) -> BearingStudent:
    """Factory of the edge student (``model:bearing_student`` in the recipes)."""
    return BearingStudent(width=width, n_classes=n_classes)


def bearing_cnn(width: int = 64, n_classes: int = N_CLASSES) -> BearingCNN:
    """Factory used by ``train_teacher.py`` and ``edgekit compress`` (the teacher is ``width=64``)."""
    return BearingCNN(width=width, n_classes=n_classes)


def macro_f1(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores (classes present in labels or predictions)."""
    logits = np.asarray(next(iter(outputs.values())))
    y = np.asarray(labels).reshape(-1)
    pred = logits.reshape(len(y), -1).argmax(axis=1)
    scores = []
    for c in np.union1d(y, pred):
        tp = float(np.sum((pred == c) & (y == c)))
        denom = float(np.sum(pred == c) + np.sum(y == c))
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0
