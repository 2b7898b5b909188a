"""The bundled example: a small CNN trained on scikit-learn's digits in a few seconds, in code, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgepack.calibration.sources import digits_split
from edgepack.core.artifacts import atomic_path

RECIPE = Path(__file__).with_name("digits.yaml")


def build_model() -> nn.Module:
    """8x8 grayscale digit -> 10 logits: a conv, a depthwise-separable block, global pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.BatchNorm2d(16),
        nn.ReLU6(),  # depthwise
        nn.Conv2d(16, 32, 1),
        nn.BatchNorm2d(32),
        nn.ReLU(),  # pointwise
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def train(weights_path: Path, *, epochs: int = 30, seed: int = 0) -> float:
    """Train on the digits train split, write the state_dict atomically; returns test accuracy in torch."""
    torch.manual_seed(seed)
    x_train, y_train = (torch.from_numpy(a) for a in digits_split("train"))
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    with atomic_path(Path(weights_path)) as tmp:
        torch.save(model.state_dict(), tmp)
    return test_accuracy(model)


def test_accuracy(model: nn.Module) -> float:
    x_test, y_test = digits_split("test")
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test)).argmax(1).numpy()
    return float(np.mean(predicted == y_test))
