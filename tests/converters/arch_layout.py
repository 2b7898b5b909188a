"""Conv nets whose classifier reads a feature map in its ONNX (NCHW) order: the places where a channels-last
lowering must reorder something (a Flatten of a >1x1 map, a Reshape, a Gemm after a permute, a Concat on the
channel axis, a Mean over H and W). Mobile nets escape these: their Flatten sees a 1x1 map.

All take a 1x1x28x28 image (digits upsampled, see ``digits_28``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional


def features(channels: int = 16) -> nn.Sequential:
    """conv -> pool -> conv -> pool: 28x28 -> 7x7 maps."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip


class FlattenNet(nn.Module):
    """The classic MNIST net: Flatten of 16x7x7 maps into two Linear layers."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = features()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class ViewNet(nn.Module):
    """``x.reshape(n, -1)`` (an ONNX Reshape, not a Flatten) read by two heads."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = features()
        self.head, self.aux = nn.Linear(16 * 7 * 7, classes), nn.Linear(16 * 7 * 7, classes)

    def forward(self, x):
        flat = self.features(x).reshape(x.shape[0], -1)
        return self.head(flat) + self.aux(flat)


class PermuteFlattenNet(nn.Module):
    """A Gemm after a transpose: the maps permuted to NHWC in torch, then flattened (TF-ported classifiers)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = features()
        self.fc = nn.Linear(7 * 7 * 16, classes)

    def forward(self, x):
        return self.fc(self.features(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1))


class ConcatMeanNet(nn.Module):
    """Two branches concatenated on the channel axis, a conv, a Mean over H and W, a Linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = features(8)
        self.left, self.right = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.mix = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())  # BN: trains fast
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.features(x)
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.fc(self.mix(x).mean(dim=(2, 3)))


class FlattenAlsoOutputNet(nn.Module):
    """The flattened features are a model output too (an embedding), so they must leave in ONNX order."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = features(4)
        self.fc = nn.Linear(4 * 7 * 7, classes)

    def forward(self, x):
        embedding = functional.relu(torch.flatten(self.features(x), 1))
        return self.fc(embedding), embedding


LAYOUT_NETS = [FlattenNet, ViewNet, PermuteFlattenNet, ConcatMeanNet, FlattenAlsoOutputNet]


def digits_28(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits upsampled to 28x28 (bilinear), (N, 1, 28, 28) float32 in [0, 1], and labels."""
    from edgepack.calibration.sources import digits_split

    images, labels = digits_split(split)
    upsampled = functional.interpolate(torch.from_numpy(images), size=(28, 28), mode="bilinear", align_corners=False)
    return upsampled.numpy(), labels


def trained_on_digits_28(net: type[nn.Module], epochs: int = 4, seed: int = 0) -> nn.Module:
    """``net()`` after a few epochs of Adam on the 28x28 digits: trained (not random) activations, > 90% top-1."""
    torch.manual_seed(seed)
    module = net()
    images, labels = digits_28("train")
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    module.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            logits = module(x[batch])
            logits = logits[0] if isinstance(logits, tuple) else logits
            functional.cross_entropy(logits, y[batch]).backward()
            optimizer.step()
    return module.eval()
