"""Models of the digits example: the "cloud" teacher (ResNet-style, ~2M parameters) and a student family.

Both take ``image`` [batch, 1, 32, 32] (scikit-learn digits upsampled, scaled to [0, 1]) and return
``logits`` [batch, 10]. ``edgekit compress`` builds them through these factories
(``model:resnet_teacher``, ``model:student``), so no pickled module is ever needed.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNetTeacher", "Student", "resnet_teacher", "student"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetTeacher(nn.Module):
    """Stride-2 stem + four residual stages (32→64→128→224 channels, 16×16 → 2×2), ~1.9M parameters."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 224), blocks: tuple[int, ...] = (1, 1, 1, 2),
                 classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class Student(nn.Module):
    """A stride-2 stem and two conv-BN-ReLU stages with pooling; ``width`` sets the channels (w, 2w, 4w).

    The stem samples 32×32 down to 16×16 (digits hold 8×8 of information): w=16 is ~24K parameters and
    ~0.6M MACs against the teacher's ~1.9M parameters and ~19M MACs.
    """

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def resnet_teacher() -> ResNetTeacher:
    return ResNetTeacher()


def student(width: int = 16) -> Student:
    return Student(width=width)
