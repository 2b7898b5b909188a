"""Normalizations over computed statistics: LayerNormalization and InstanceNormalization.

TFLite has no builtin for either; both become MEAN / SUB / MUL / RSQRT in the stored layout, with the scale and
shift broadcast to that layout, so a channels-last tensor stays channels-last.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout
from edgepack.converters.onnx_to_tf.registry import Node, Value, register


def normalize(x: Value, onnx_axes: list[int], epsilon: float):
    """(x - mean) / sqrt(var + eps) over ``onnx_axes``, computed in x's stored layout."""
    axes = [layout.runtime_axis(a, x.rank, x.perm) for a in onnx_axes]
    count = int(np.prod([x.data.shape[a] for a in axes]))
    centered = x.data - tf.math.reduce_sum(x.data, axis=axes, keepdims=True) * np.float32(1.0 / count)
    variance = tf.math.reduce_mean(tf.math.square(centered), axis=axes, keepdims=True)
    return centered * tf.math.rsqrt(variance + np.float32(epsilon))


def affine(data, x: Value, scale: np.ndarray | None, shift: np.ndarray | None, onnx_shape: tuple[int, ...]):
    """data * scale + shift, both constants reshaped to ``onnx_shape`` and laid out like x."""
    if scale is not None:
        data = data * layout.broadcast_constant(scale.reshape(onnx_shape).astype(np.float32), x.rank, x.perm)
    if shift is not None:
        data = data + layout.broadcast_constant(shift.reshape(onnx_shape).astype(np.float32), x.rank, x.perm)
    return data


@register("LayerNormalization")
def lower_layer_norm(node: Node) -> Value:
    x = node.inputs[0]
    if len(node.output_names) > 1 and any(node.output_names[1:]):
        raise node.unsupported("the Mean and InvStdDev outputs are not supported; supported: output 0 only")
    axis = node.attr("axis", -1) % x.rank
    scale, shift = node.constant_input(1, "scale"), node.constant_input(2, "bias")
    data = normalize(x, list(range(axis, x.rank)), node.attr("epsilon", 1e-5))
    return Value(affine(data, x, scale, shift, tuple(x.onnx_shape[axis:])), x.perm)


@register("InstanceNormalization")
def lower_instance_norm(node: Node) -> Value:
    x = node.inputs[0]
    scale, shift = node.constant_input(1, "scale"), node.constant_input(2, "bias")
    data = normalize(x, list(range(2, x.rank)), node.attr("epsilon", 1e-5))
    return Value(affine(data, x, scale, shift, (-1,) + (1,) * (x.rank - 2)), x.perm)
