"""Convolutions and matrix products: Conv (1-D/2-D, grouped, depthwise), ConvTranspose, Gemm, MatMul,
BatchNormalization."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout, padding
from edgepack.converters.onnx_to_tf.registry import Node, Value, register


@register("Conv")
def lower_conv(node: Node) -> Value:
    x = node.inputs[0]
    weights = node.constant_input(1, "weights")
    if x.rank not in (3, 4):
        raise node.unsupported(f"{x.rank - 2}-D convolution not supported; supported: 1-D, 2-D")
    data = layout.channels_last(x)
    if x.rank == 3:  # 1-D runs as 2-D over a height of 1, which TFLite handles natively.
        data, weights = tf.expand_dims(data, 1), weights[:, :, None, :]
    window = padding.window_from(as_2d(node, x.rank), list(weights.shape[2:]))
    data, mode = pad_for_window(as_2d(node, x.rank), data, window)
    out = grouped_conv2d(data, weights.astype(np.float32), node.attr("group", 1), window, mode)
    bias = node.constant_input(2, "bias")
    if bias is not None:
        out = tf.nn.bias_add(out, bias.astype(np.float32))
    out = tf.squeeze(out, 1) if x.rank == 3 else out
    return Value(out, layout.channels_last_perm(x.rank))


def as_2d(node: Node, rank: int) -> Node:
    """A 1-D node's spatial attributes with a leading height axis of size 1."""
    if rank == 4:
        return node
    attrs = dict(node.attrs)
    for key, pad_value in (("strides", 1), ("dilations", 1), ("kernel_shape", 1), ("output_padding", 0)):
        if key in attrs:
            attrs[key] = [pad_value, *attrs[key]]
    if "output_shape" in attrs:
        attrs["output_shape"] = [1, *attrs["output_shape"][-1:]]
    if "pads" in attrs:
        attrs["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
    return Node(node.op_type, node.name, node.inputs, attrs, node.output_names, node.opset)


def pad_for_window(node: Node, data, window: padding.Window, pad_value: float = 0.0):
    """Channels-last data plus the TF padding mode; an explicit PAD only when SAME/VALID do not match."""
    sizes = [int(d) for d in data.shape[1:-1]]
    begin, end = padding.onnx_pads(node, sizes, window)
    mode = padding.tf_padding_mode(sizes, window, begin, end)
    if mode is not None:
        return data, mode
    return tf.pad(data, padding.explicit_paddings(begin, end), constant_values=pad_value), "VALID"


def grouped_conv2d(data, weights: np.ndarray, group: int, window: padding.Window, mode: str):
    channels = int(data.shape[-1])
    strides = [1, *window.strides, 1]
    if group > 1 and group == channels and weights.shape[1] == 1:
        out_channels, _, kh, kw = weights.shape
        # ONNX output channel c*m + j reads input channel c: TF's depthwise filter is [kh, kw, c, m].
        depthwise = weights.reshape(channels, out_channels // channels, kh, kw).transpose(2, 3, 0, 1)
        return depthwise_conv2d(data, depthwise, window, mode)
    # Grouped (group < channels) works too: the filter's in-channels are channels / group.
    filters = weights.transpose(2, 3, 1, 0)
    return tf.nn.conv2d(data, filters, strides, mode, dilations=[1, *window.dilations, 1])


def depthwise_conv2d(data, filters: np.ndarray, window: padding.Window, mode: str):
    """TF's depthwise conv takes equal strides only. A 1-D conv (height 1, kernel height 1) may use its width
    stride for the height too; a 2-D one with unequal strides runs at stride 1 and keeps every stride-th pixel."""
    stride_h, stride_w = window.strides
    if stride_h == stride_w:
        return tf.nn.depthwise_conv2d(data, filters, [1, stride_h, stride_w, 1], mode, dilations=window.dilations)
    if int(data.shape[1]) == 1 and filters.shape[0] == 1:
        return tf.nn.depthwise_conv2d(data, filters, [1, stride_w, stride_w, 1], mode, dilations=window.dilations)
    if mode == "SAME":  # Stride-1 SAME pads differently: pad as the strided window would, then run VALID.
        sizes = [int(d) for d in data.shape[1:-1]]
        data, mode = tf.pad(data, padding.explicit_paddings(*padding.same_pads(sizes, window))), "VALID"
    full = tf.nn.depthwise_conv2d(data, filters, [1, 1, 1, 1], mode, dilations=window.dilations)
    return full[:, ::stride_h, ::stride_w, :]


@register("ConvTranspose")
def lower_conv_transpose(node: Node) -> Value:
    x = node.inputs[0]
    weights = node.constant_input(1, "weights")
    if x.rank not in (3, 4) or node.attr("group", 1) != 1:
        raise node.unsupported("supported: 1-D and 2-D ConvTranspose with group=1")
    if x.rank == 3:  # 1-D runs as 2-D over a height of 1, like Conv.
        weights = weights[:, :, None, :]
    node2d = as_2d(node, x.rank)
    window = padding.window_from(node2d, list(weights.shape[2:]))
    if any(d != 1 for d in window.dilations):
        raise node.unsupported(f"dilations {window.dilations} not supported (TFLite TRANSPOSE_CONV has none)")
    data = layout.channels_last(x)
    data = tf.expand_dims(data, 1) if x.rank == 3 else data
    # ONNX weights are [in, out, kh, kw]; TF's transposed-conv filter is [kh, kw, out, in].
    out = transposed_conv2d(node2d, data, weights.transpose(2, 3, 1, 0).astype(np.float32), window)
    bias = node.constant_input(2, "bias")
    out = out if bias is None else tf.nn.bias_add(out, bias.astype(np.float32))
    out = tf.squeeze(out, 1) if x.rank == 3 else out
    return Value(out, layout.channels_last_perm(x.rank))


def transposed_conv2d(node: Node, data, filters: np.ndarray, window: padding.Window):
    """One TRANSPOSE_CONV: TF's SAME when its alignment is ONNX's, else VALID over the full size and a crop."""
    sizes = [int(d) for d in data.shape[1:-1]]
    begin, end, extra = padding.transposed_pads(node, sizes, window)
    full = [(n - 1) * window.strides[i] + window.span(i) + extra[i] for i, n in enumerate(sizes)]
    out = [f - b - e for f, b, e in zip(full, begin, end, strict=True)]
    batch, channels, strides = int(data.shape[0]), filters.shape[2], [1, *window.strides, 1]
    if padding.transposed_same_matches(sizes, out, window, begin):
        return tf.nn.conv2d_transpose(data, filters, [batch, *out, channels], strides, "SAME")
    result = tf.nn.conv2d_transpose(data, filters, [batch, *full, channels], strides, "VALID")
    if not any(begin) and not any(end):
        return result
    return result[:, begin[0] : full[0] - end[0], begin[1] : full[1] - end[1], :]


@register("Gemm")
def lower_gemm(node: Node) -> Value:
    a, b, c = node.input(0), node.input(1), node.input(2)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    left = layout.onnx_order(a)
    left = tf.transpose(left) if node.attr("transA", 0) else left
    if b.is_constant:  # Scale the weights in numpy so TFLite sees one FULLY_CONNECTED.
        right = rows_in_feature_order(b.data.T if node.attr("transB", 0) else b.data, a) * np.float32(alpha)
        out = tf.linalg.matmul(left, right.astype(np.float32))
    else:
        out = tf.linalg.matmul(left, b.data, transpose_b=bool(node.attr("transB", 0))) * alpha
    if c is None:
        return Value(out)
    bias = c.data * np.float32(beta) if c.is_constant else layout.onnx_order(c) * beta
    return Value(out + bias)


def rows_in_feature_order(weights: np.ndarray, data: Value) -> np.ndarray:
    """The weights' rows reordered to match a flattened input stored in another feature order."""
    return weights if data.feature_order is None else weights[data.feature_order]


@register("MatMul")
def lower_matmul(node: Node) -> Value:
    a, b = node.inputs[:2]
    left = layout.onnx_order(a)
    right = rows_in_feature_order(b.data, a).astype(np.float32) if b.is_constant else layout.onnx_order(b)
    # numpy matmul rules for 1-D operands: a row vector on the left, a column vector on the right, then dropped.
    left = tf.reshape(left, [1, -1]) if a.rank == 1 else left
    right = (right.reshape(-1, 1) if b.is_constant else tf.reshape(right, [-1, 1])) if b.rank == 1 else right
    out = tf.linalg.matmul(left, right)
    out = tf.squeeze(out, -1) if b.rank == 1 else out
    return Value(tf.squeeze(out, -2) if a.rank == 1 else out)


@register("BatchNormalization")
def lower_batch_norm(node: Node) -> Value:
    x = node.inputs[0]
    gamma, beta, mean, var = (node.constant_input(i, "statistics") for i in range(1, 5))
    scale = gamma / np.sqrt(var + node.attr("epsilon", 1e-5))
    shift = beta - mean * scale
    channel_shape = (-1,) + (1,) * (x.rank - 2)
    scale = layout.broadcast_constant(scale.reshape(channel_shape).astype(np.float32), x.rank, x.perm)
    shift = layout.broadcast_constant(shift.reshape(channel_shape).astype(np.float32), x.rank, x.perm)
    return Value(x.data * scale + shift, x.perm)
