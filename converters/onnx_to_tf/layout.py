"""Layout bookkeeping: which axis order a stored tensor has, and the cheapest way to change it.

Inside the lowering, image-like tensors are channels-last (what TFLite kernels want). A value carries the
permutation from its ONNX order; ops that need ONNX order convert with one transpose, and a transpose that
does not move memory (only size-1 axes change place, e.g. N x C x 1 x 1) becomes a free reshape instead.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf.registry import Value


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


def transposed(value: Value, order) -> Value:
    """ONNX Transpose(perm=order) of ``value`` without moving data: only the recorded permutation changes."""
    if value.is_constant:
        return Value(np.transpose(value.data, order))
    stored = range(value.rank) if value.perm is None else value.perm
    inverse = np.argsort(order)
    return Value(value.data, normalize_perm(tuple(int(inverse[p]) for p in stored)))


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


def reshape_groups(in_shape: list[int], out_shape: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input axes with the runs of output axes they merge or split into (size-1 axes ignored)."""
    ins = [a for a, d in enumerate(in_shape) if d != 1]
    outs = [a for a, d in enumerate(out_shape) if d != 1]
    groups, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        group_in, group_out = [ins[i]], [outs[j]]
        size_in, size_out = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while size_in != size_out:
            if size_in < size_out and i < len(ins):
                size_in, i = size_in * in_shape[ins[i]], i + 1
                group_in.append(ins[i - 1])
            elif size_out < size_in and j < len(outs):
                size_out, j = size_out * out_shape[outs[j]], j + 1
                group_out.append(outs[j - 1])
            else:
                return None
        groups.append((group_in, group_out))
    return groups if i == len(ins) and j == len(outs) else None


def reshape_perm(in_shape: list[int], perm: tuple[int, ...], out_shape: list[int]) -> tuple[int, ...] | None:
    """A stored order for the Reshape's output that needs no transpose of a tensor stored with ``perm``.

    Possible when each merged (or split) run of ONNX axes is also a run, in the same order, in storage: then the
    runs are reshaped where they lie. E.g. NHWC conv features flattened to ONNX (N, C, H*W) are stored
    (N, H*W, C). Size-1 output axes go first. None when no such order exists.
    """
    groups = reshape_groups(in_shape, out_shape)
    if groups is None:
        return None
    group_of = {axis: index for index, (axes, _) in enumerate(groups) for axis in axes}
    stored = [axis for axis in perm if in_shape[axis] != 1]
    order, k = [], 0
    while k < len(stored):
        axes = groups[group_of[stored[k]]][0]
        if stored[k : k + len(axes)] != axes:
            return None
        order.append(group_of[stored[k]])
        k += len(axes)
    ones = [a for a, d in enumerate(out_shape) if d == 1]
    return tuple(ones + [axis for index in order for axis in groups[index][1]])


def stored_moves_for_onnx_order(value: Value) -> bool:
    """Whether bringing ``value`` back to ONNX order is a real transpose (not just size-1 axes moving)."""
    return value.perm is not None and moves_memory([int(d) for d in value.data.shape], tuple(np.argsort(value.perm)))


def reshape_needs_transpose(value: Value, shape: list[int]) -> bool:
    return stored_moves_for_onnx_order(value) and reshape_perm(value.onnx_shape, value.perm, shape) is None


def reshaped(value: Value, shape: list[int]) -> Value:
    """ONNX Reshape of ``value`` to ``shape``: in place when its layout allows, else from ONNX order."""
    if stored_moves_for_onnx_order(value):
        kept = reshape_perm(value.onnx_shape, value.perm, shape)
        if kept is not None:
            return Value(tf.reshape(value.data, [shape[a] for a in kept]), normalize_perm(kept))
    return Value(tf.reshape(onnx_order(value), shape))
