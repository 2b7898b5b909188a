"""Pooling, reductions, running sums and softmax. Pools run channels-last; reductions map axes, not transposing."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout, padding
from edgepack.converters.onnx_to_tf.ops_conv import as_2d
from edgepack.converters.onnx_to_tf.registry import Node, Value, register


@register("MaxPool", "AveragePool")
def lower_pool(node: Node) -> Value:
    x = node.inputs[0]
    if x.rank not in (3, 4):
        raise node.unsupported(f"{x.rank - 2}-D pooling not supported; supported: 1-D, 2-D")
    if len(node.output_names) > 1 and node.output_names[1]:
        raise node.unsupported("the Indices output of MaxPool is not supported")
    node2d = as_2d(node, x.rank)
    data = layout.channels_last(x)
    data = tf.expand_dims(data, 1) if x.rank == 3 else data
    window = padding.window_from(node2d, list(node2d.attr("kernel_shape")))
    pool = max_pool if node.op_type == "MaxPool" else average_pool
    out = pool(node2d, data, window)
    out = tf.squeeze(out, 1) if x.rank == 3 else out
    return Value(out, layout.channels_last_perm(x.rank))


def pool_pads(node: Node, sizes: list[int], window: padding.Window) -> tuple[list[int], list[int], list[int]]:
    """Declared begin/end pads, plus the extra end padding ceil_mode needs for its last window."""
    begin, end = padding.onnx_pads(node, sizes, window)
    extra = [0] * len(sizes)
    if node.attr("ceil_mode", 0):
        for axis, size in enumerate(sizes):
            padded, stride = size + begin[axis] + end[axis], window.strides[axis]
            out = math.ceil((padded - window.span(axis)) / stride) + 1
            if (out - 1) * stride >= size + begin[axis]:  # A window may not start in the end padding.
                out -= 1
            extra[axis] = max((out - 1) * stride + window.span(axis) - padded, 0)
    return begin, end, extra


def max_pool(node: Node, data, window: padding.Window):
    if any(d != 1 for d in window.dilations):
        raise node.unsupported(f"dilations {window.dilations} not supported; supported: 1")
    sizes = [int(d) for d in data.shape[1:-1]]
    begin, end, extra = pool_pads(node, sizes, window)
    end = [e + x for e, x in zip(end, extra, strict=True)]
    mode = padding.tf_padding_mode(sizes, window, begin, end)
    if mode is None:
        data, mode = padded_with_lowest(node, data, padding.explicit_paddings(begin, end)), "VALID"
    return tf.nn.max_pool2d(data, window.kernel, [1, *window.strides, 1], mode)


def padded_with_lowest(node: Node, data, paddings: list[list[int]]):
    """``data`` padded with a value no window's maximum can be. At 16 bits the converter has no PADV2 (a pad with a
    value other than zero), so the data is zero-padded and a constant holding the grid's lowest value in the border
    (zero inside) is added: PAD and ADD have 16-bit kernels and both operands sit on the data's grid (the pool's
    output shares it), so the sum is exact."""
    grid = node.extra.get("output_grids", {}).get(0)
    if grid is None or grid[2] != 16:
        return tf.pad(data, paddings, constant_values=float(np.finfo(np.float32).min))
    low, high, bits = grid
    border = np.pad(np.zeros(data.shape, np.float32), paddings, constant_values=low)
    on_grid = lambda t: tf.quantization.fake_quant_with_min_max_vars(t, low, high, num_bits=bits)  # noqa: E731
    return on_grid(tf.pad(data, paddings) + on_grid(tf.constant(border)))


def average_pool(node: Node, data, window: padding.Window):
    sizes = [int(d) for d in data.shape[1:-1]]
    begin, end, extra = pool_pads(node, sizes, window)
    include_pad = bool(node.attr("count_include_pad", 0))
    mode = padding.tf_padding_mode(sizes, window, begin, end) if not any(extra) else None
    strides = [1, *window.strides, 1]
    # TF's SAME average leaves the padding out of the count, which is count_include_pad=0.
    if mode == "VALID" or (mode == "SAME" and not include_pad):
        return tf.nn.avg_pool2d(data, window.kernel, strides, mode)
    full_end = [e + x for e, x in zip(end, extra, strict=True)]
    padded = tf.pad(data, padding.explicit_paddings(begin, full_end))
    out = tf.nn.avg_pool2d(padded, window.kernel, strides, "VALID")
    counts = window_counts(sizes, window, begin, end, extra, include_pad)
    if np.all(counts == np.prod(window.kernel)):
        return out
    return out * (np.prod(window.kernel) / counts)[None, :, :, None].astype(np.float32)


def window_counts(sizes, window, begin, end, extra, include_pad: bool) -> np.ndarray:
    """How many elements each output window averages over: the input, plus declared pads if counted."""
    mask = np.zeros([s + b + e + x for s, b, e, x in zip(sizes, begin, end, extra, strict=True)], np.float32)
    if include_pad:
        mask[: sizes[0] + begin[0] + end[0], : sizes[1] + begin[1] + end[1]] = 1.0
    else:
        mask[begin[0] : begin[0] + sizes[0], begin[1] : begin[1] + sizes[1]] = 1.0
    windows = np.lib.stride_tricks.sliding_window_view(mask, window.kernel)
    return windows[:: window.strides[0], :: window.strides[1]].sum(axis=(-2, -1))


@register("GlobalAveragePool", "GlobalMaxPool")
def lower_global_pool(node: Node) -> Value:
    x = node.inputs[0]
    axes = [layout.runtime_axis(a, x.rank, x.perm) for a in range(2, x.rank)]
    reduce = tf.math.reduce_mean if node.op_type == "GlobalAveragePool" else tf.math.reduce_max
    return Value(reduce(x.data, axis=axes, keepdims=True), x.perm)


_REDUCTIONS = {
    "ReduceMean": tf.math.reduce_mean,
    "ReduceMax": tf.math.reduce_max,
    "ReduceMin": tf.math.reduce_min,
    "ReduceSum": tf.math.reduce_sum,
}


@register(*_REDUCTIONS)
def lower_reduce(node: Node) -> Value:
    x = node.inputs[0]
    axes = reduce_axes(node, x.rank)
    if axes is None:
        return Value(x.data, x.perm)
    keepdims = bool(node.attr("keepdims", 1))
    runtime_axes = [layout.runtime_axis(a, x.rank, x.perm) for a in axes]
    out = _REDUCTIONS[node.op_type](x.data, axis=runtime_axes, keepdims=keepdims)
    return Value(out, x.perm if keepdims else layout.perm_after_dropping(x.perm, axes))


def reduce_axes(node: Node, rank: int) -> list[int] | None:
    """ONNX axes to reduce, normalized; None means 'no reduction' (noop_with_empty_axes)."""
    axes_as_input = node.opset >= (13 if node.op_type == "ReduceSum" else 18)
    axes = node.constant_input(1, "axes") if axes_as_input else node.attr("axes")
    if axes is None or len(axes) == 0:
        return None if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))


@register("Softmax")
def lower_softmax(node: Node) -> Value:
    x = node.inputs[0]
    axis = node.attr("axis", -1 if node.opset >= 13 else 1) % x.rank
    if node.opset < 13 and axis != x.rank - 1:
        return flattened_softmax(x, axis)
    return Value(tf.nn.softmax(x.data, axis=layout.runtime_axis(axis, x.rank, x.perm)), x.perm)


def flattened_softmax(x: Value, axis: int) -> Value:
    """Before opset 13 a Softmax normalises over all axes from ``axis`` on together: flatten there, softmax over the
    flat axis, reshape back (what onnx's 12 -> 13 adapter writes, so float and int8 files compute alike)."""
    shape = list(x.onnx_shape)
    flat = layout.reshaped(x, [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))])
    normalised = Value(tf.nn.softmax(flat.data, axis=layout.runtime_axis(1, 2, flat.perm)), flat.perm)
    return layout.reshaped(normalised, shape)


@register("CumSum")
def lower_cumsum(node: Node) -> Value:
    """Running sums (position ids from an attention mask: ``cumsum(mask) * mask``), along the stored axis."""
    x = node.inputs[0]
    axis = int(np.asarray(node.constant_input(1, "axis")).reshape(-1)[0]) % x.rank
    stored_axis = layout.runtime_axis(axis, x.rank, x.perm)
    exclusive, reverse = bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0))
    return Value(tf.math.cumsum(x.data, axis=stored_axis, exclusive=exclusive, reverse=reverse), x.perm)
