"""Shape and data-movement ops. Axis-taking ops map their axes through the stored layout; ops whose meaning
depends on memory order (Reshape, Flatten, Unsqueeze) first return to ONNX order, which is free when only
size-1 axes move (Flatten after global pooling)."""

from __future__ import annotations

import numpy as np
import onnx
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout
from edgepack.converters.onnx_to_tf.registry import Node, Value, register

_INT64_MAX = np.iinfo(np.int64).max


@register("Identity", "Dropout")
def lower_identity(node: Node) -> Value:
    if node.op_type == "Dropout" and len(node.output_names) > 1 and node.output_names[1]:
        raise node.unsupported("the mask output of Dropout is not supported")
    return node.inputs[0]


@register("Constant")
def lower_constant(node: Node) -> Value:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            return Value(np.asarray(node.attrs[key]))
    raise node.unsupported(
        f"attributes {sorted(node.attrs)} not supported; supported: value, value_float(s), value_int(s)"
    )


@register("Cast")
def lower_cast(node: Node) -> Value:
    x = node.inputs[0]
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(node.attr("to")))
    if x.is_constant:
        return Value(x.data.astype(dtype))
    return Value(tf.cast(x.data, tf.as_dtype(dtype)), x.perm)


@register("Reshape")
def lower_reshape(node: Node) -> Value:
    x = node.inputs[0]
    shape = [int(d) for d in node.constant_input(1, "shape")]
    if not node.attr("allowzero", 0):  # 0 copies the input's size on that axis.
        shape = [x.onnx_shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        shape = [int(np.prod(x.onnx_shape)) // known if d == -1 else d for d in shape]
    return flattened_for_dense(node, x, shape) or layout.reshaped(x, shape)


@register("Flatten")
def lower_flatten(node: Node) -> Value:
    x = node.inputs[0]
    axis = node.attr("axis", 1) % max(x.rank, 1)
    shape = [int(np.prod(x.onnx_shape[:axis])), int(np.prod(x.onnx_shape[axis:]))]
    return flattened_for_dense(node, x, shape) or layout.reshaped(x, shape)


def flattened_for_dense(node: Node, x: Value, shape: list[int]) -> Value | None:
    """A batch-keeping flatten that only dense layers read, flattened in stored order with ``feature_order``
    recorded (the dense layers permute their weights instead); None when the plain reshape is as good."""
    if not node.extra.get("feeds_only_dense_layers") or x.perm is None or x.perm[0] != 0:
        return None
    if len(shape) != 2 or shape[0] != x.onnx_shape[0] or not layout.reshape_needs_transpose(x, shape):
        return None
    order = np.arange(shape[1]).reshape(x.onnx_shape[1:]).transpose([p - 1 for p in x.perm[1:]]).reshape(-1)
    return Value(tf.reshape(x.data, shape), feature_order=order)


@register("Transpose")
def lower_transpose(node: Node) -> Value:
    """Free: the data stays put and only the recorded permutation changes."""
    x = node.inputs[0]
    return layout.transposed(x, node.attr("perm", list(range(x.rank))[::-1]))


@register("Squeeze")
def lower_squeeze(node: Node) -> Value:
    x = node.inputs[0]
    axes = node.constant_input(1, "axes") if node.opset >= 13 else node.attr("axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.onnx_shape) if d == 1]
    axes = sorted(int(a) % x.rank for a in np.asarray(axes).reshape(-1))
    runtime_axes = [layout.runtime_axis(a, x.rank, x.perm) for a in axes]
    return Value(tf.squeeze(x.data, runtime_axes), layout.perm_after_dropping(x.perm, axes))


@register("Unsqueeze")
def lower_unsqueeze(node: Node) -> Value:
    x = node.inputs[0]
    axes = node.constant_input(1, "axes") if node.opset >= 13 else node.attr("axes")
    rank = x.rank + len(axes)
    shape = list(x.onnx_shape)
    for axis in sorted(int(a) % rank for a in np.asarray(axes).reshape(-1)):
        shape.insert(axis, 1)
    return layout.reshaped(x, shape)


def common_perm(values: list[Value]) -> tuple[int, ...] | None:
    """The layout most inputs already have, so a multi-input op transposes as little as possible."""
    perms = [v.perm for v in values if not v.is_constant]
    return max(set(perms), key=perms.count) if perms else None


@register("Concat")
def lower_concat(node: Node) -> Value:
    values = [v for v in node.inputs if v is not None and 0 not in v.onnx_shape]
    perm = common_perm(values)
    rank = values[0].rank
    axis = layout.runtime_axis(node.attr("axis"), rank, perm)
    grid = node.extra.get("output_grids", {}).get(0)
    if grid is not None and grid[2] == 16 and len(values) > 1:
        return Value(concat_as_padded_sum([v.data if v.is_constant else layout.in_perm(v, perm) for v in values],
                                          axis, grid), perm)  # fmt: skip
    return Value(tf.concat([layout.in_perm(v, perm) for v in values], axis=axis), perm)


def concat_as_padded_sum(pieces: list, axis: int, grid: tuple[float, float, int]):
    """Concatenation at 16 bits: the converter has no int16 CONCATENATION (its dialect lacks the type, though
    LiteRT's kernel copies int16 when every grid is the output's), so each piece is zero-padded to the output's
    extent and the pieces are added: PAD and ADD have 16-bit kernels, zero is exact on a symmetric grid and the
    padded pieces never overlap, so each value is only requantized to the output's grid, as in the ONNX QDQ file.
    Partial sums hold a subset of the output's values: they take its grid. A constant piece is put on it too."""
    low, high, bits = grid
    on_grid = lambda t: tf.quantization.fake_quant_with_min_max_vars(t, low, high, num_bits=bits)  # noqa: E731
    sizes = [int(p.shape[axis]) for p in pieces]
    total, offset, result = sum(sizes), 0, None
    for piece, size in zip(pieces, sizes, strict=True):
        paddings = [[0, 0]] * len(piece.shape)
        paddings[axis] = [offset, total - offset - size]
        # A constant is padded before it goes on the grid: the converter must see one quantized constant.
        constant = isinstance(piece, np.ndarray)
        padded = on_grid(tf.constant(np.pad(piece, paddings))) if constant else tf.pad(piece, paddings)
        result = padded if result is None else on_grid(result + padded)
        offset += size
    return result


@register("Split")
def lower_split(node: Node) -> list[Value]:
    x = node.inputs[0]
    onnx_axis = node.attr("axis", 0) % x.rank
    sizes = node.constant_input(1, "split") if node.opset >= 13 else node.attr("split")
    count = node.attr("num_outputs", len(node.output_names))
    if sizes is None:  # Equal parts; with num_outputs the last one may be smaller.
        part = -(-x.onnx_shape[onnx_axis] // count)
        sizes = [min(part, x.onnx_shape[onnx_axis] - i * part) for i in range(count)]
    pieces = tf.split(x.data, [int(s) for s in sizes], axis=layout.runtime_axis(onnx_axis, x.rank, x.perm))
    return [Value(piece, x.perm) for piece in pieces]


@register("Slice")
def lower_slice(node: Node) -> Value:
    x = node.inputs[0]
    index = [slice(None)] * x.rank
    for axis, start, end, step in slice_ranges(node, x.rank):
        index[layout.runtime_axis(axis, x.rank, x.perm)] = onnx_slice(start, end, step, x.onnx_shape[axis])
    return Value(x.data[tuple(index)], x.perm)


def slice_ranges(node: Node, rank: int) -> list[tuple[int, int, int, int]]:
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends = node.constant_input(1, "starts"), node.constant_input(2, "ends")
        axes, steps = node.constant_input(3, "axes"), node.constant_input(4, "steps")
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    return [(int(a) % rank, int(s), int(e), int(st)) for a, s, e, st in zip(axes, starts, ends, steps, strict=True)]


def onnx_slice(start: int, end: int, step: int, size: int) -> slice:
    """ONNX start/end clamping (INT_MAX, negatives) as a Python slice that means the same."""
    start = start + size if start < 0 else start
    end = end + size if end < 0 and end > -_INT64_MAX else end
    if step > 0:
        return slice(min(max(start, 0), size), min(max(end, 0), size), step)
    start, end = min(max(start, -1), size - 1), min(max(end, -1), size - 1)
    return slice(start, None if end < 0 else end, step)


@register("Gather")
def lower_gather(node: Node) -> Value:
    x, indices = node.inputs[:2]
    axis = node.attr("axis", 0) % x.rank
    if not indices.is_constant:  # Embedding lookups: ids are non-negative, so no wrap-around ops are added.
        data = x.data if x.is_constant else layout.onnx_order(x)
        return Value(tf.gather(data, layout.onnx_order(indices), axis=axis))
    indices = np.where(indices.data < 0, indices.data + x.onnx_shape[axis], indices.data)
    if indices.ndim == 0:  # A scalar index drops the axis; the layout of the rest is unchanged.
        out = tf.gather(x.data, int(indices), axis=layout.runtime_axis(axis, x.rank, x.perm))
        return Value(out, layout.perm_after_dropping(x.perm, [axis]))
    return Value(tf.gather(layout.onnx_order(x), indices.astype(np.int32), axis=axis))


@register("Expand")
def lower_expand(node: Node) -> Value:
    x = node.inputs[0]
    shape = list(np.broadcast_shapes(tuple(x.onnx_shape), tuple(int(d) for d in node.constant_input(1, "shape"))))
    perm = x.perm if x.rank == len(shape) else None
    data = layout.broadcast_tensor(x, len(shape), perm)
    stored = shape if perm is None else [shape[p] for p in perm]
    return Value(tf.broadcast_to(data, stored), perm)


@register("Tile")
def lower_tile(node: Node) -> Value:
    x = node.inputs[0]
    repeats = [int(r) for r in node.constant_input(1, "repeats")]
    stored = repeats if x.perm is None else [repeats[p] for p in x.perm]
    return Value(tf.tile(x.data, stored), x.perm)
