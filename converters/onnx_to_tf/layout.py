"""Layout bookkeeping: which axis order a stored tensor has, and the cheapest way to change it.

Inside the lowering, image-like tensors are channels-last (what TFLite kernels want). A value carries the
permutation from its ONNX order; ops that need ONNX order convert with one transpose, and a transpose that
does not move memory (only size-1 axes change place, e.g. N x C x 1 x 1) becomes a free reshape instead.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from converters.onnx_to_tf.registry import Value


def channels_last_perm(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def normalize_perm(perm: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """None for the identity, so 'ONNX order' has a single spelling."""
    if perm is None or tuple(perm) == tuple(range(len(perm))):
        return None
    return tuple(int(p) for p in perm)


def layout_name(rank: int, perm: tuple[int, ...] | None) -> str | None:
    if rank not in (3, 4):
        return None
    if perm is None:
        return "NCHW" if rank == 4 else "NCW"
    if tuple(perm) == channels_last_perm(rank):
        return "NHWC" if rank == 4 else "NWC"
    return None


def moves_memory(shape: list[int], perm: tuple[int, ...]) -> bool:
    """Whether transposing changes element order; axes of size 1 can move freely."""
    big_axes = [axis for axis in perm if shape[axis] != 1]
    return big_axes != sorted(big_axes)


def transpose(tensor, perm: tuple[int, ...]):
    """tf.transpose, or a reshape when the transpose would not move memory."""
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(len(perm))):
        return tensor
    shape = [int(d) for d in tensor.shape]
    if moves_memory(shape, perm):
        return tf.transpose(tensor, perm)
    return tf.reshape(tensor, [shape[p] for p in perm])


def in_perm(value: Value, perm: tuple[int, ...] | None):
    """The value's data as a tf tensor stored with ``perm`` relative to ONNX order."""
    data = value.data
    if value.is_constant:
        return tf.constant(data if perm is None else np.transpose(data, perm))
    current = np.arange(value.rank) if value.perm is None else np.array(value.perm)
    target = np.arange(value.rank) if perm is None else np.array(perm)
    return transpose(data, tuple(np.argsort(current)[target]))


def onnx_order(value: Value):
    return in_perm(value, None)


def channels_last(value: Value):
    return in_perm(value, channels_last_perm(value.rank))


def runtime_axis(axis: int, rank: int, perm: tuple[int, ...] | None) -> int:
    """Where ONNX axis ``axis`` sits in a tensor stored with ``perm``."""
    axis = axis % rank
    return axis if perm is None else list(perm).index(axis)


def perm_after_dropping(perm: tuple[int, ...] | None, dropped: list[int]) -> tuple[int, ...] | None:
    """The permutation left when ONNX axes ``dropped`` disappear (reduce without keepdims, squeeze)."""
    if perm is None:
        return None
    kept = [axis for axis in perm if axis not in dropped]
    return normalize_perm(tuple(int(r) for r in np.argsort(np.argsort(kept))))


def broadcast_constant(array: np.ndarray, rank: int, perm: tuple[int, ...] | None) -> np.ndarray:
    """A constant operand raised to ``rank`` (numpy broadcasting rules) and stored with ``perm``."""
    array = array.reshape((1,) * (rank - array.ndim) + array.shape)
    return array if perm is None else np.transpose(array, perm)


def broadcast_tensor(value: Value, rank: int, perm: tuple[int, ...] | None):
    """A tensor operand raised to ``rank`` and stored with ``perm`` (for elementwise ops)."""
    if value.rank == rank:
        return in_perm(value, perm)
    data = tf.reshape(onnx_order(value), [1] * (rank - value.rank) + value.onnx_shape)
    return in_perm(Value(data), perm)
