"""Spatial padding shared by convolutions and pools: ONNX pads to TF 'SAME'/'VALID' or an explicit pad."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgepack.converters.onnx_to_tf.registry import Node


@dataclass
class Window:
    """A sliding window over the spatial axes (all lists have one entry per spatial axis)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]

    def span(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1


def window_from(node: Node, kernel: list[int]) -> Window:
    spatial = len(kernel)
    return Window(
        kernel=list(kernel),
        strides=list(node.attr("strides", [1] * spatial)),
        dilations=list(node.attr("dilations", [1] * spatial)),
    )


def same_pads(sizes: list[int], window: Window, upper: bool = True) -> tuple[list[int], list[int]]:
    """What TF's 'SAME' pads (ONNX SAME_UPPER); SAME_LOWER puts the odd pixel first."""
    begin, end = [], []
    for axis, size in enumerate(sizes):
        out = math.ceil(size / window.strides[axis])
        total = max((out - 1) * window.strides[axis] + window.span(axis) - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return begin, end


def onnx_pads(node: Node, sizes: list[int], window: Window) -> tuple[list[int], list[int]]:
    """Begin and end padding per spatial axis, as the ONNX node asks for it."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    spatial = len(sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(sizes, window, upper=auto_pad == "SAME_UPPER")
    if auto_pad == "VALID":
        return [0] * spatial, [0] * spatial
    pads = list(node.attr("pads", [0] * (2 * spatial)))
    return pads[:spatial], pads[spatial:]


def transposed_pads(node: Node, sizes: list[int], window: Window) -> tuple[list[int], list[int], list[int]]:
    """ConvTranspose's begin and end crop of the full output, and its output_padding (added at the end)."""
    spatial = len(sizes)
    extra = list(node.attr("output_padding", [0] * spatial))
    auto_pad, output_shape = node.attr("auto_pad", "NOTSET"), node.attr("output_shape")
    if output_shape is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        pads = list(node.attr("pads", [0] * (2 * spatial)))
        return pads[:spatial], pads[spatial:], extra
    strides = window.strides
    wanted = list(output_shape)[-spatial:] if output_shape else [n * strides[i] for i, n in enumerate(sizes)]
    total = [(n - 1) * strides[i] + window.span(i) + extra[i] - wanted[i] for i, n in enumerate(sizes)]
    # As onnxruntime: SAME_UPPER crops the odd pixel at the end; SAME_LOWER and a bare output_shape at the start.
    small = [t // 2 for t in total]
    large = [t - t // 2 for t in total]
    return (small, large, extra) if auto_pad == "SAME_UPPER" else (large, small, extra)


def transposed_same_matches(sizes: list[int], out: list[int], window: Window, begin: list[int]) -> bool:
    """Whether TF's SAME transposed conv to size ``out`` crops exactly ``begin`` at the start (the rest at the end)."""
    for axis, size in enumerate(sizes):
        stride = window.strides[axis]
        crop = (size - 1) * stride + window.span(axis) - out[axis]  # TF's SAME crops half of this at the start.
        if math.ceil(out[axis] / stride) != size or crop < 0 or crop // 2 != begin[axis]:
            return False
    return True


def tf_padding_mode(sizes: list[int], window: Window, begin: list[int], end: list[int]) -> str | None:
    """'VALID' or 'SAME' when TF's own padding matches; None when an explicit pad is needed."""
    if not any(begin) and not any(end):
        return "VALID"
    if (begin, end) == same_pads(sizes, window):
        return "SAME"
    return None


def explicit_paddings(begin: list[int], end: list[int]) -> list[list[int]]:
    """tf.pad paddings for a channels-last tensor (batch and channels untouched)."""
    return [[0, 0], *[[b, e] for b, e in zip(begin, end, strict=True)], [0, 0]]
