"""Tiny models built in code for the pipeline tests, and a quick digits trainer for them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from edgepack.calibration.sources import digits_split
from torch import nn


def conv_net() -> nn.Module:
    """Plain conv net: conv-bn-relu x2, max pool, global average pool, linear."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def digits_example() -> nn.Module:
    """The bundled example's CNN (conv, depthwise + pointwise with ReLU6, max pool): 16x8-convertible."""
    from edgepack.examples.digits import build_model

    return build_model()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class _PausesWhileExported(nn.Sequential):
    """With EDGEPACK_TEST_PAUSE_AT=torch.export, its forward touches EDGEPACK_TEST_PAUSE_FILE and waits while
    torch.export traces it: a kill test's signal then lands inside the exporter, with the ONNX temp file open."""

    def forward(self, x):
        if torch.compiler.is_exporting() and os.environ.get("EDGEPACK_TEST_PAUSE_AT") == "torch.export":
            Path(os.environ["EDGEPACK_TEST_PAUSE_FILE"]).touch()
            time.sleep(120)
        return super().forward(x)


def mlp_pausing_in_export() -> nn.Module:
    """mlp (the same state_dict keys), able to wait inside torch.export when a test asks."""
    return _PausesWhileExported(*mlp())


def depthwise_net() -> nn.Module:
    """MobileNet-style: a strided conv, a depthwise 3x3 + pointwise block with ReLU6, hard-swish, global pool."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )  # fmt: skip


def depthwise_relu_net() -> nn.Module:
    """MobileNet's block with plain ReLU (cross-layer equalization's case): conv, depthwise 3x3, pointwise 1x1."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-bn-relu, conv-bn, plus the shortcut (a strided 1x1 conv-bn when the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs)
        self.conv2, self.bn2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU(inplace=True)  # one in-place ReLU used twice, as torchvision writes it
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class SmallResNet(nn.Module):
    """A plain ResNet: a conv-bn-relu stem, two identity blocks at 16 channels, a strided block to 32, pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16), BasicBlock(16, 32, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def small_resnet() -> nn.Module:
    return SmallResNet()


class TwoInputNet(nn.Module):
    """An image and a feature vector (the image's row means) meet after the conv trunk.

    Flattening a 4x4 feature map is a real NCHW -> NHWC layout change: the converter must transpose there.
    """

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * 4 * 4 + 8, 10)

    def forward(self, image: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.trunk(image), rows], dim=1))


def two_input_net() -> nn.Module:
    return TwoInputNet()


def row_means(images: np.ndarray) -> np.ndarray:
    """The second input of TwoInputNet: (N, 1, 8, 8) -> (N, 8)."""
    return images.mean(axis=3)[:, 0, :].astype(np.float32)


def train_and_save(name: str, path: Path, epochs: int = 25) -> Path:
    torch.manual_seed(0)
    model = globals()[name]()
    images, labels = (torch.from_numpy(a) for a in digits_split("train"))
    extra = (torch.from_numpy(row_means(images.numpy())),) if name == "two_input_net" else ()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(images), generator=generator).split(64):
            optimizer.zero_grad()
            logits = model(images[batch], *(e[batch] for e in extra))
            nn.functional.cross_entropy(logits, labels[batch]).backward()
            optimizer.step()
    torch.save(model.state_dict(), path)
    return path


class _Attention(nn.Module):
    """Self-attention with the heads reshaped out of one qkv Linear, as ViT/timm write it."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), _Attention(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Two pre-norm transformer blocks over 8 tokens of 8 features (input [batch, 8, 8]); GELU in the MLPs."""

    def __init__(self):
        super().__init__()
        self.embed, self.blocks, self.head = nn.Linear(8, 32), nn.Sequential(_Block(), _Block()), nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


def tiny_transformer() -> nn.Module:
    return TinyTransformer()


class MhaResidual(nn.Module):
    """torch's own attention with a residual around it (x + MultiheadAttention(x)), input [batch, 8, 16]: TFLite's
    16x8 converter fails on the residual ADD (a converter limit; int8 and the int16 ONNX file convert)."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(16, 32), nn.Linear(32, 10)
        self.attention = nn.MultiheadAttention(32, 2, batch_first=True)

    def forward(self, x):
        h = self.embed(x)
        return self.head((h + self.attention(h, h, h, need_weights=False)[0]).mean(1))


def mha_residual() -> nn.Module:
    return MhaResidual()
