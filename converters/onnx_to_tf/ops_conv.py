"""Convolutions and matrix products: Conv (1-D/2-D, grouped, depthwise), Gemm, MatMul, BatchNormalization."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from converters.onnx_to_tf import layout, padding
from converters.onnx_to_tf.registry import Node, Value, register


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
    for key in ("strides", "dilations", "kernel_shape"):
        if key in attrs:
            attrs[key] = [1, *attrs[key]]
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
        return tf.nn.depthwise_conv2d(data, depthwise, strides, mode, dilations=window.dilations)
    # Grouped (group < channels) works too: the filter's in-channels are channels / group.
    filters = weights.transpose(2, 3, 1, 0)
    return tf.nn.conv2d(data, filters, strides, mode, dilations=[1, *window.dilations, 1])


@register("Gemm")
def lower_gemm(node: Node) -> Value:
    a, b, c = node.input(0), node.input(1), node.input(2)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    left = layout.onnx_order(a)
    left = tf.transpose(left) if node.attr("transA", 0) else left
    if b.is_constant:  # Scale the weights in numpy so TFLite sees one FULLY_CONNECTED.
        right = (b.data.T if node.attr("transB", 0) else b.data) * np.float32(alpha)
        out = tf.linalg.matmul(left, right.astype(np.float32))
    else:
        out = tf.linalg.matmul(left, b.data, transpose_b=bool(node.attr("transB", 0))) * alpha
    if c is None:
        return Value(out)
    bias = c.data * np.float32(beta) if c.is_constant else layout.onnx_order(c) * beta
    return Value(out + bias)


@register("MatMul")
def lower_matmul(node: Node) -> Value:
    a, b = node.inputs[:2]
    if a.rank < 2 or b.rank < 2:
        raise node.unsupported("1-D operands not supported; supported: rank >= 2")
    right = b.data.astype(np.float32) if b.is_constant else layout.onnx_order(b)
    return Value(tf.linalg.matmul(layout.onnx_order(a), right))


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
