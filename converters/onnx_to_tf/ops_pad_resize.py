"""Pad and Resize: spatial ops that keep the layout of their input."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout
from edgepack.converters.onnx_to_tf.registry import Node, Value, register

_LINEAR_MODES = {
    "half_pixel": {"half_pixel_centers": True},
    "pytorch_half_pixel": {"half_pixel_centers": True},
    "align_corners": {"align_corners": True},
    "asymmetric": {},
}
# TF's half-pixel nearest picks floor((x + 0.5) * in / out): ONNX's half_pixel rounding ties up, and
# tf_half_pixel_for_nn (tf2onnx's) flooring.
_NEAREST_MODES = {
    ("asymmetric", "floor"): {},
    ("align_corners", "round_prefer_ceil"): {"align_corners": True},
    ("half_pixel", "round_prefer_ceil"): {"half_pixel_centers": True},
    ("pytorch_half_pixel", "round_prefer_ceil"): {"half_pixel_centers": True},
    ("tf_half_pixel_for_nn", "floor"): {"half_pixel_centers": True},
}


@register("Pad")
def lower_pad(node: Node) -> Value:
    x = node.inputs[0]
    begin, end, value = pad_amounts(node, x.rank)
    if min(begin + end) < 0:
        raise node.unsupported(f"negative pads {begin + end} (cropping) not supported; supported: pads >= 0")
    paddings = [[0, 0] for _ in range(x.rank)]
    for axis in range(x.rank):
        paddings[layout.runtime_axis(axis, x.rank, x.perm)] = [begin[axis], end[axis]]
    mode = node.attr("mode", "constant")
    if mode == "constant":
        return Value(tf.pad(x.data, paddings, constant_values=value), x.perm)
    if mode == "reflect":
        return Value(tf.pad(x.data, paddings, mode="REFLECT"), x.perm)
    if mode == "edge":
        return Value(edge_pad(x.data, paddings), x.perm)
    raise node.unsupported(f"Pad mode {mode!r} not supported; supported: constant, reflect, edge")


def pad_amounts(node: Node, rank: int) -> tuple[list[int], list[int], float]:
    """Begin and end pads per ONNX axis, and the constant fill value."""
    if node.opset < 11:
        pads, value, axes = node.attr("pads"), node.attr("value", 0.0), None
    else:
        pads, fill = node.constant_input(1, "pads"), node.constant_input(2, "constant_value")
        value, axes = (0.0 if fill is None else float(fill)), node.constant_input(3, "axes")
    pads = [int(p) for p in pads]
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[i + len(axes)]
    return begin, end, value


def edge_pad(data, paddings: list[list[int]]):
    """Replicate the border (TF has no 'edge' mode): concatenate repeated edge slices, axis by axis."""
    for axis, (before, after) in enumerate(paddings):
        size = int(data.shape[axis])
        parts = []
        if before:
            parts.append(tf.repeat(tf.gather(data, [0], axis=axis), before, axis=axis))
        parts.append(data)
        if after:
            parts.append(tf.repeat(tf.gather(data, [size - 1], axis=axis), after, axis=axis))
        data = tf.concat(parts, axis=axis) if len(parts) > 1 else data
    return data


@register("Resize")
def lower_resize(node: Node) -> Value:
    x = node.inputs[0]
    if x.rank != 4:
        raise node.unsupported(f"rank-{x.rank} Resize not supported; supported: 4-D (N, C, H, W)")
    size = output_size(node, x)
    data = layout.channels_last(x)
    mode = node.attr("mode", "nearest")
    coordinates = node.attr("coordinate_transformation_mode", "half_pixel")
    if node.attr("antialias", 0):
        raise node.unsupported("antialias=1 not supported; supported: antialias=0")
    if mode == "linear" and coordinates in _LINEAR_MODES:
        out = tf.compat.v1.image.resize_bilinear(data, size, **_LINEAR_MODES[coordinates])
    elif mode == "nearest" and (coordinates, node.attr("nearest_mode", "round_prefer_floor")) in _NEAREST_MODES:
        flags = _NEAREST_MODES[(coordinates, node.attr("nearest_mode", "round_prefer_floor"))]
        out = tf.compat.v1.image.resize_nearest_neighbor(data, size, **flags)
    else:
        raise node.unsupported(resize_support_message(node, mode, coordinates))
    return Value(out, layout.channels_last_perm(4))


def resize_support_message(node: Node, mode: str, coordinates: str) -> str:
    if mode not in ("nearest", "linear"):
        return f"Resize mode {mode!r} not supported; supported: nearest, linear"
    if mode == "linear":
        return f"linear Resize with coordinate_transformation_mode {coordinates!r} not supported; supported: " + (
            ", ".join(_LINEAR_MODES)
        )
    pairs = ", ".join(f"{c}+{n}" for c, n in _NEAREST_MODES)
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    return f"nearest Resize with {coordinates}+{nearest} not supported; supported: {pairs}"


def output_size(node: Node, x: Value) -> list[int]:
    """Output (H, W) from sizes or scales; batch and channels must not change."""
    scales_index = 1 if node.opset < 11 else 2
    sizes = node.constant_input(3, "sizes") if node.opset >= 11 else None
    scales = node.constant_input(scales_index, "scales")
    axes = node.attr("axes")
    if axes is not None and sorted(int(a) % 4 for a in axes) != [2, 3]:
        raise node.unsupported(f"axes {axes} not supported; supported: resizing H and W (axes 2, 3)")
    if sizes is not None and sizes.size:
        out = [int(s) for s in sizes][-2:]
        kept = sizes.size == 2 or list(sizes[:2]) == x.onnx_shape[:2]
    else:
        out = [int(np.floor(x.onnx_shape[2 + i] * float(scales[-2:][i]))) for i in range(2)]
        kept = scales.size == 2 or np.allclose(scales[:2], 1.0)
    if not kept:
        raise node.unsupported("resizing the batch or channel axis is not supported; supported: H and W")
    return out
