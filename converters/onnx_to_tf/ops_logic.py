"""Comparisons, boolean logic and Where: the mask arithmetic attention and post-processing are built from."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout
from edgepack.converters.onnx_to_tf.registry import Node, Value, register

_COMPARISONS = {
    "Equal": tf.math.equal,
    "Less": tf.math.less,
    "LessOrEqual": tf.math.less_equal,
    "Greater": tf.math.greater,
    "GreaterOrEqual": tf.math.greater_equal,
}
_LOGICAL = {"And": tf.math.logical_and, "Or": tf.math.logical_or, "Xor": tf.math.logical_xor}


def common_layout(values: list[Value]) -> tuple[int, tuple[int, ...] | None]:
    """Rank and stored permutation of an elementwise result: those of the highest-rank tensor operand."""
    rank = max(v.rank for v in values)
    leaders = [v for v in values if not v.is_constant and v.rank == rank]
    return rank, (leaders[0].perm if leaders else None)


def laid_out(value: Value, rank: int, perm: tuple[int, ...] | None, dtype=None):
    """An operand raised to ``rank`` and stored with ``perm``; constants optionally cast to ``dtype``."""
    if value.is_constant:
        data = value.data if dtype is None else value.data.astype(dtype)
        return layout.broadcast_constant(data, rank, perm)
    return layout.broadcast_tensor(value, rank, perm)


def tensor_dtype(values: list[Value]):
    """The numpy dtype of the first computed operand: constants follow it (ONNX types them the same)."""
    return next(v.data.dtype.as_numpy_dtype for v in values if not v.is_constant)


@register(*_COMPARISONS, *_LOGICAL)
def lower_comparison(node: Node) -> Value:
    values = node.inputs[:2]
    rank, perm = common_layout(values)
    dtype = tensor_dtype(values)
    fn = _COMPARISONS.get(node.op_type) or _LOGICAL[node.op_type]
    return Value(fn(*(laid_out(v, rank, perm, dtype) for v in values)), perm)


@register("Not")
def lower_not(node: Node) -> Value:
    x = node.inputs[0]
    return Value(tf.math.logical_not(x.data), x.perm)


@register("Where")
def lower_where(node: Node) -> Value:
    condition, *choices = node.inputs[:3]
    rank, perm = common_layout(node.inputs[:3])
    dtype = tensor_dtype(choices) if any(not c.is_constant for c in choices) else choices[0].data.dtype
    operands = [laid_out(condition, rank, perm, np.bool_)] + [laid_out(c, rank, perm, dtype) for c in choices]
    return Value(tf.where(*operands), perm)


@register("IsNaN")
def lower_is_nan(node: Node) -> Value:
    """torch's SDPA with a boolean mask exports ``Where(IsNaN(softmax), 0, softmax)``: a fully masked row is zeros."""
    x = node.inputs[0]
    return Value(tf.math.is_nan(x.data), x.perm)


@register("IsInf")
def lower_is_inf(node: Node) -> Value:
    """Past the largest finite value: TFLite stores tf.math.is_inf's infinite constant as a finite one."""
    x = node.inputs[0]
    largest = np.finfo(x.data.dtype.as_numpy_dtype).max
    positive, negative = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    if positive and negative:
        return Value(tf.math.greater(tf.math.abs(x.data), largest), x.perm)
    if positive or negative:
        return Value(tf.math.greater(x.data, largest) if positive else tf.math.less(x.data, -largest), x.perm)
    return Value(tf.zeros_like(x.data, dtype=tf.bool), x.perm)
