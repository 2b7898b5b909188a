"""Compact torch definitions of the vision and audio networks phone and Pi apps ship (no torchvision here).

Each follows its paper's block structure; ``width`` scales channels so tests can run narrow copies while
``benchmarks/convert_architectures.py`` builds the full-size ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Channels times ``width``, rounded to a multiple of ``divisor`` as the mobile papers do."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU6) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        scale = functional.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(scale))))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (squeeze-excite) -> project 1x1, with a skip when shapes allow."""

    def __init__(self, cin, expanded, cout, kernel=3, stride=1, act=nn.ReLU6, se: SqueezeExcite | None = None):
        super().__init__()
        expand = [conv_bn(cin, expanded, 1, act=act)] if expanded != cin else []
        depthwise = conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act)
        self.body = nn.Sequential(*expand, depthwise, *([se] if se else []), conv_bn(expanded, cout, 1, act=None))
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.skip else self.body(x)


class MobileNetV2(nn.Module):
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        cin = scaled(32, width)
        blocks = [conv_bn(3, cin, stride=2)]
        for expansion, channels, repeats, stride in self.SETTINGS:
            cout = scaled(channels, width)
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cin * expansion, cout, stride=stride if i == 0 else 1))
                cin = cout
        last = scaled(1280, max(width, 1.0))
        self.features = nn.Sequential(*blocks, conv_bn(cin, last, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class MobileNetV3Small(nn.Module):
    # kernel, expanded, out, squeeze-excite, hard-swish, stride (the paper's table 2)
    SETTINGS = [
        (3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
        (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
        (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
        (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1),
    ]  # fmt: skip

    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        cin = scaled(16, width)
        blocks = [conv_bn(3, cin, stride=2, act=nn.Hardswish)]
        for kernel, expanded, channels, use_se, hard_swish, stride in self.SETTINGS:
            expanded, cout = scaled(expanded, width), scaled(channels, width)
            se = SqueezeExcite(expanded, scaled(expanded // 4, 1.0)) if use_se else None
            act = nn.Hardswish if hard_swish else nn.ReLU
            blocks.append(InvertedResidual(cin, expanded, cout, kernel, stride, act, se))
            cin = cout
        self.features = nn.Sequential(*blocks, conv_bn(cin, 6 * cin, 1, act=nn.Hardswish))
        self.classifier = nn.Sequential(nn.Linear(6 * cin, 1024), nn.Hardswish(), nn.Linear(1024, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class EfficientNetB0(nn.Module):
    """MBConv blocks with SiLU and sigmoid squeeze-excite; ``lite=True`` is EfficientNet-Lite (ReLU6, no SE)."""

    SETTINGS = [(1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2), (6, 5, 112, 3, 1),
                (6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]  # fmt: skip

    def __init__(self, width: float = 1.0, depth: float = 1.0, classes: int = 1000, lite: bool = False):
        super().__init__()
        act = nn.ReLU6 if lite else nn.SiLU
        cin = scaled(32, width)
        blocks = [conv_bn(3, cin, stride=2, act=act)]
        for expansion, kernel, channels, repeats, stride in self.SETTINGS:
            cout = scaled(channels, width)
            for i in range(max(1, round(repeats * depth))):
                se = None if lite else SqueezeExcite(cin * expansion, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
                blocks.append(InvertedResidual(cin, cin * expansion, cout, kernel, stride if i == 0 else 1, act, se))
                cin = cout
        self.features = nn.Sequential(*blocks, conv_bn(cin, scaled(1280, width), 1, act=act))
        self.classifier = nn.Linear(scaled(1280, width), classes)

    def forward(self, x):
        return self.classifier(functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride, act=nn.ReLU), conv_bn(cout, cout, act=None))
        self.shortcut = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, width: float = 1.0, classes: int = 1000):
        super().__init__()
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        stem = [nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        layers, cin = [*stem, nn.MaxPool2d(3, 2, 1)], widths[0]
        for index, cout in enumerate(widths):
            layers += [BasicBlock(cin, cout, 1 if index == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1) if x.shape[-1] == 1 else torch.mean(x, dim=(2, 3)))


class UNet(nn.Module):
    """Two down levels; up through ConvTranspose once and bilinear Resize once, concatenating the skips."""

    def __init__(self, base: int = 8, classes: int = 3):
        super().__init__()
        relu = nn.ReLU
        self.enc1, self.enc2 = conv_bn(3, base, act=relu), conv_bn(base, 2 * base, act=relu)
        self.bottom = conv_bn(2 * base, 4 * base, act=relu)
        self.up2 = nn.ConvTranspose2d(4 * base, 2 * base, 2, stride=2)
        self.dec2 = conv_bn(4 * base, 2 * base, act=relu)
        self.dec1 = conv_bn(3 * base, base, act=relu)
        self.head = nn.Conv2d(base, classes, 1)

    def forward(self, x):
        skip1 = self.enc1(x)
        skip2 = self.enc2(functional.max_pool2d(skip1, 2))
        x = self.bottom(functional.max_pool2d(skip2, 2))
        x = self.dec2(torch.cat([self.up2(x), skip2], dim=1))
        x = functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(self.dec1(torch.cat([x, skip1], dim=1)))


class Detector(nn.Module):
    """SSD-style: two feature levels, per-level box and class heads, outputs (boxes, scores) over all anchors."""

    def __init__(self, anchors: int = 3, classes: int = 5, width: int = 16):
        super().__init__()
        self.anchors, self.classes = anchors, classes
        self.stage1 = nn.Sequential(conv_bn(3, width, stride=2), conv_bn(width, width, stride=2))
        self.stage2 = conv_bn(width, 2 * width, stride=2)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, anchors * 4, 3, padding=1) for c in (width, 2 * width))
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, anchors * classes, 3, padding=1) for c in (width, 2 * width))

    def forward(self, x):
        level1 = self.stage1(x)
        levels = [level1, self.stage2(level1)]
        boxes = [self.flatten(head(f), 4) for head, f in zip(self.box_heads, levels, strict=True)]
        scores = [self.flatten(head(f), self.classes) for head, f in zip(self.cls_heads, levels, strict=True)]
        return torch.cat(boxes, 1), torch.sigmoid(torch.cat(scores, 1))

    @staticmethod
    def flatten(head_map, per_anchor: int):
        # (N, A*K, H, W) -> (N, H*W*A, K), the layout every SSD/YOLO post-processor reads.
        return head_map.permute(0, 2, 3, 1).reshape(head_map.shape[0], -1, per_anchor)


class AudioNet(nn.Module):
    """A raw-waveform keyword spotter: strided 1-D convs, pooling, global average, linear."""

    def __init__(self, width: int = 16, classes: int = 12):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 80, stride=4, padding=38), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(width, 2 * width, 3, padding=1), nn.BatchNorm1d(2 * width), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(2 * width, 2 * width, 3, padding=1, groups=2 * width), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, waveform):
        return self.fc(self.features(waveform).mean(dim=-1))


def with_explicit_same_padding(module: nn.Module) -> nn.Module:
    """Every padded Conv2d becomes ZeroPad2d + an unpadded Conv2d with TensorFlow's 'same' amounts (stride 2: the
    extra row and column at the end), as TF-trained ports such as efficientnet-lite-pytorch export: explicit Pad
    nodes. Edits ``module`` in place; stride-2 layers then pad as TensorFlow does, not as PyTorch's symmetric
    padding did, so the outputs change a little."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.padding != (0, 0):
            total = max(child.kernel_size[0] - child.stride[0], 0)
            child.padding = (0, 0)
            setattr(module, name, nn.Sequential(nn.ZeroPad2d((total // 2, total - total // 2) * 2), child))
        else:
            with_explicit_same_padding(child)
    return module
