"""Tiny models and data for the compress tests (seconds each): residual, MobileNet-style, 1-D, transformer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.b1 = ResBlock(width, width)
        self.b2 = ResBlock(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.b2(self.b1(self.stem(x)))), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(1, c // r), 1)
        self.fc2 = nn.Conv2d(max(1, c // r), c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.se = SqueezeExcite(h)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class TinyMobileNet(nn.Module):
    """Depthwise separable blocks with squeeze-excite and a concatenating branch."""

    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.block = InvertedResidual(width)
        self.branch_a = nn.Conv2d(width, width, 1)
        self.branch_b = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)
        return self.head(x.mean((2, 3)))


class Tiny1D(nn.Module):
    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2, groups=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.net(x).mean(-1))


class TinyEncoder(nn.Module):
    """A one-layer transformer encoder over token ids with an attention mask (two inputs)."""

    def __init__(self, vocab: int = 32, dim: int = 32, heads: int = 4, ff: int = 64, classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff)
        self.ff2 = nn.Linear(ff, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]
        pad = attention_mask == 0
        a, _ = self.attn(x, x, x, key_padding_mask=pad, need_weights=False)
        x = self.norm1(x + a)
        x = self.norm2(x + self.ff2(torch.relu(self.ff1(x))))
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.cls((x * m).sum(1) / m.sum(1).clamp(min=1.0))


def image_data(n: int = 256, size: int = 16, classes: int = 4, seed: int = 0):
    """Images whose class is the quadrant holding a bright blob (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, 1, size, size)).astype(np.float32)
    h = size // 2
    for i, c in enumerate(y):
        r, col = (c // 2) * h, (c % 2) * h
        x[i, 0, r + 2 : r + h - 2, col + 2 : col + h - 2] += 2.0
    return x, y.astype(np.int64)


def signal_data(n: int = 240, length: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 1, length, dtype=np.float32)
    freqs = np.array([2.0, 5.0, 9.0])
    x = np.stack([np.sin(2 * np.pi * freqs[y][:, None] * t), np.cos(2 * np.pi * freqs[y][:, None] * t)], 1)
    x = (x + rng.normal(0, 0.2, x.shape)).astype(np.float32)
    return x, y.astype(np.int64)


def token_data(n: int = 256, seq: int = 12, vocab: int = 32, seed: int = 0):
    """Label 1 when token 7 appears in the unpadded part of the sequence."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (n, seq)).astype(np.int64)
    lengths = rng.integers(4, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)
    ids[ids == 7] = 8
    y = rng.integers(0, 2, n)
    for i in np.where(y == 1)[0]:
        ids[i, rng.integers(0, lengths[i])] = 7
    return ids, mask, y.astype(np.int64)


class Spectral(nn.Module):
    """Calls an operator ONNX has no equivalent for (a symmetric eigen-decomposition)."""

    def forward(self, x):
        g = x.flatten(2) @ x.flatten(2).transpose(1, 2)
        return torch.linalg.eigvalsh(g)


class Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.spectral = Spectral()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.spectral(self.conv(x)))


class OutlierNet(nn.Module):
    """Classifies the blob quadrant exactly, through one feature scaled by 1e4 and scaled back in the
    head: per-tensor INT8 on that activation wipes out the other features, so only keeping the
    sensitive nodes in float restores the accuracy."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(8)
        self.register_buffer("gain", torch.tensor([1e4, 1.0, 1.0, 1.0]))
        self.head = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.diag(1.0 / self.gain))

    def forward(self, x):
        return self.head(torch.flatten(self.pool(x), 1) * self.gain)


class Drifting(nn.Module):
    """Python-side state the tracer bakes in as a constant: ONNX Runtime then disagrees with eager."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1)) * float(self.calls)
