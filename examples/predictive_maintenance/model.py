"""The bearing-fault classifier: a 1-D CNN over the order-tracked spectra plus the streamed condition indicators.

``bearing_cnn(width=...)`` is the factory ``edgekit compress`` rebuilds models from
(``examples.predictive_maintenance.model:bearing_cnn``). The "cloud" teacher is ``width=64``: four
conv-conv-pool stages over the two spectra channels (envelope, plain) along the order axis, global
average pooling, and a small branch for the condition indicators (log-scaled levels, kurtosis, crest
factor), so the network sees what a vibration analyst looks at.
"""

from __future__ import annotations

import torch
from torch import nn

from examples.predictive_maintenance.data import CLASSES, FEATURES

__all__ = ["INPUT_NAMES", "BearingCNN", "bearing_cnn"]

INPUT_NAMES = ("spectrum", *FEATURES)


def _stage(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(),
        nn.Conv1d(c_out, c_out, k, padding=k // 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(),
        nn.MaxPool1d(2),
    )


class BearingCNN(nn.Module):
    """Inputs: ``spectrum`` [batch, 2, 256] and one [batch, 1] tensor per feature; output: class logits."""

    def __init__(self, width: int = 64, n_classes: int = len(CLASSES), dropout: float = 0.2):
        super().__init__()
        w = width
        self.stages = nn.Sequential(
            _stage(2, w // 2, 7),
            _stage(w // 2, w, 5),
            _stage(w, 2 * w, 5),
            _stage(2 * w, 2 * w, 3),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        n_feat = len(FEATURES)
        self.feature_norm = nn.BatchNorm1d(n_feat)
        self.feature_mlp = nn.Sequential(nn.Linear(n_feat, 32), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * w + 32, 128), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(128, n_classes))

    def forward(self, spectrum: torch.Tensor, rms: torch.Tensor, kurtosis: torch.Tensor, crest_factor: torch.Tensor,
                band_low: torch.Tensor, band_mid: torch.Tensor, band_high: torch.Tensor) -> torch.Tensor:
        z = self.pool(self.stages(spectrum)).flatten(1)
        feats = torch.cat([torch.log(rms + 1e-4), torch.log(kurtosis), torch.log(crest_factor),
                           torch.log(band_low + 1e-4), torch.log(band_mid + 1e-4), torch.log(band_high + 1e-4)], dim=1)
        f = self.feature_mlp(self.feature_norm(feats))
        return self.head(torch.cat([z, f], dim=1))


def bearing_cnn(width: int = 64, n_classes: int = len(CLASSES)) -> BearingCNN:
    """Factory used by ``train_teacher.py`` and ``edgekit compress`` (the teacher is ``width=64``)."""
    return BearingCNN(width=width, n_classes=n_classes)
