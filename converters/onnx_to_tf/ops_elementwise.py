"""Elementwise ops: activations and broadcasting arithmetic. They keep the layout of their tensor operand."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout
from edgepack.converters.onnx_to_tf.registry import Node, Value, register

_UNARY = {
    "Relu": tf.nn.relu,
    "Sigmoid": tf.math.sigmoid,
    "Tanh": tf.math.tanh,
    "Sqrt": tf.math.sqrt,
    "Neg": tf.math.negative,
    "Exp": tf.math.exp,
    "Abs": tf.math.abs,
}
_BINARY = {"Add": tf.math.add, "Sub": tf.math.subtract, "Mul": tf.math.multiply, "Div": tf.math.divide}


def unary(node: Node, fn) -> Value:
    x = node.inputs[0]
    return Value(fn(x.data), x.perm)


@register(*_UNARY)
def lower_unary(node: Node) -> Value:
    return unary(node, _UNARY[node.op_type])


def aligned_operands(values: list[Value]) -> tuple[list, tuple[int, ...] | None]:
    """Operands of an elementwise op in one layout (the highest-rank tensor's); constants move in numpy."""
    tensors = [v for v in values if not v.is_constant]
    leader = max(tensors, key=lambda v: v.rank)
    rank = max(v.rank for v in values)
    perm = leader.perm if leader.rank == rank else None
    dtype = leader.data.dtype.as_numpy_dtype
    operands = [
        layout.broadcast_constant(v.data.astype(dtype), rank, perm)
        if v.is_constant
        else layout.broadcast_tensor(v, rank, perm)
        for v in values
    ]
    return operands, perm


@register(*_BINARY)
def lower_binary(node: Node) -> Value:
    operands, perm = aligned_operands(node.inputs[:2])
    grids = node.extra.get("constant_grids", {})
    if node.op_type == "Div" and 1 in grids:
        reciprocal = np.asarray(1.0 / operands[1], np.float32)
        return Value(operands[0] * on_constant_grid(node, 1, reciprocal, reciprocal=True), perm)
    if node.op_type == "Add" and grids:
        # The converter's 16-bit ADD takes no broadcast (SUB does): x + c is x - (-c), exact on a symmetric grid.
        index = next(iter(grids))
        return Value(operands[1 - index] - on_constant_grid(node, index, -operands[index]), perm)
    a, b = (on_constant_grid(node, i, operand) for i, operand in enumerate(operands))
    return Value(_BINARY[node.op_type](a, b), perm)


def on_constant_grid(node: Node, index: int, operand: np.ndarray, reciprocal: bool = False):
    """Input ``index`` through fake-quant when it is a constant the calibration put on a grid (16x8 kernels read
    constants as int16; the ONNX QDQ file stores the same int16 values). TFLite has no 16-bit DIV: a division by a
    constant multiplies by its reciprocal, on the symmetric grid over the reciprocal's values (the same as the
    divisor's when it is a scalar: both exact)."""
    grid = node.extra.get("constant_grids", {}).get(index)
    if grid is None or not isinstance(operand, np.ndarray):
        return operand
    low, high, bits = grid
    if reciprocal:
        step = float(np.abs(operand).max()) / (2 ** (bits - 1) - 1) or 1.0
        low, high = -(2 ** (bits - 1)) * step, (2 ** (bits - 1) - 1) * step
    operand = distinct_constant(operand.astype(np.float32), low, high, bits, node.extra["constant_uses"])
    return tf.quantization.fake_quant_with_min_max_vars(tf.constant(operand), low, high, num_bits=bits)


def distinct_constant(values: np.ndarray, low: float, high: float, bits: int, uses: dict) -> np.ndarray:
    """``values`` on their grid, then moved towards zero by 1/256 of a step per earlier use of the same constant on
    the same grid: fake-quant gives the same integers, but the converter no longer merges the two fake-quantized
    constants into one, which its 16-bit quantizer gives only its first reader (the second fails to verify:
    'binary op operands have same element type'; the GELUs of every layer of a transformer share constants)."""
    step = (high - low) / (2**bits - 1)
    snapped = (low + np.round((np.clip(values, low, high) - low) / step) * step).astype(np.float32)
    key = (snapped.tobytes(), snapped.shape, low, high)
    count = uses.get(key, 0) % 128  # under half a step: every copy rounds back to the same integer
    uses[key] = count + 1
    return (snapped - np.where(snapped > 0, 1.0, -1.0) * count * step / 256).astype(np.float32)


@register("Max", "Min")
def lower_variadic_extreme(node: Node) -> Value:
    operands, perm = aligned_operands(node.inputs)
    fn = tf.math.maximum if node.op_type == "Max" else tf.math.minimum
    result = operands[0]
    for operand in operands[1:]:
        result = fn(result, operand)
    return Value(result, perm)


@register("Pow")
def lower_pow(node: Node) -> Value:
    x, exponent = node.inputs[:2]
    if exponent.is_constant and exponent.data.size == 1:
        power = float(exponent.data.reshape(()))
        special = {1.0: lambda t: t, 2.0: tf.math.square, 0.5: tf.math.sqrt, -1.0: tf.math.reciprocal}
        if power in special:
            return Value(special[power](x.data), x.perm)
    (a, b), perm = aligned_operands([x, exponent])
    return Value(tf.math.pow(a, b), perm)


@register("Clip")
def lower_clip(node: Node) -> Value:
    x = node.inputs[0]
    low, high = clip_bounds(node)
    # These exact bounds map to single fused TFLite activations (RELU, RELU6, RELU_N1_TO_1).
    if low == 0.0 and high is None:
        return Value(tf.nn.relu(x.data), x.perm)
    if (low, high) == (0.0, 6.0):
        return Value(tf.nn.relu6(x.data), x.perm)
    result = x.data if low is None else tf.math.maximum(x.data, low)
    return Value(result if high is None else tf.math.minimum(result, high), x.perm)


def clip_bounds(node: Node) -> tuple[float | None, float | None]:
    if node.opset < 11:
        return node.attr("min"), node.attr("max")
    low, high = node.constant_input(1, "min"), node.constant_input(2, "max")
    return (None if low is None else float(low)), (None if high is None else float(high))


@register("LeakyRelu")
def lower_leaky_relu(node: Node) -> Value:
    return unary(node, lambda t: tf.nn.leaky_relu(t, alpha=node.attr("alpha", 0.01)))


@register("PRelu")
def lower_prelu(node: Node) -> Value:
    x, slope = node.inputs[:2]
    if not slope.is_constant:
        raise node.unsupported("the slope must be a constant")
    alpha = layout.broadcast_constant(slope.data.astype(np.float32), x.rank, x.perm)
    return Value(tf.nn.relu(x.data) + alpha * tf.math.minimum(x.data, 0.0), x.perm)


@register("HardSwish")
def lower_hard_swish(node: Node) -> Value:
    return unary(node, lambda t: t * tf.nn.relu6(t + 3.0) * (1.0 / 6.0))


@register("HardSigmoid")
def lower_hard_sigmoid(node: Node) -> Value:
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return unary(node, lambda t: tf.math.minimum(tf.nn.relu(t * alpha + beta), 1.0))


@register("Gelu")
def lower_gelu(node: Node) -> Value:
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise node.unsupported(f"approximate={approximate!r} not supported; supported: none, tanh")
    return unary(node, lambda t: tf.nn.gelu(t, approximate=approximate == "tanh"))


@register("Erf")
def lower_erf(node: Node) -> Value:
    return unary(node, erf_approximation)


def erf_approximation(t):
    """erf from Abramowitz & Stegun 7.1.26 (max error 1.5e-7): TFLite has no ERF builtin."""
    a1, a2, a3, a4, a5, p = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429, 0.3275911
    magnitude = tf.math.abs(t)
    k = 1.0 / (1.0 + p * magnitude)
    poly = k * (a1 + k * (a2 + k * (a3 + k * (a4 + k * a5))))
    return tf.math.sign(t) * (1.0 - poly * tf.math.exp(-magnitude * magnitude))
