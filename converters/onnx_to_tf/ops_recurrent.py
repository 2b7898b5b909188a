"""LSTM and GRU, unrolled over the (static) sequence length.

Why unrolled and not TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM (reachable through the converter's ``api_implements
= "lstm_..."`` function hook; Keras 3's LSTM itself lowers to a WHILE loop): the fused op keeps its hidden and
cell state in variable tensors that persist between invocations, so calling the model twice on the same input
gives different outputs (measured: 7e-3 apart) unless the app resets the interpreter's variables, while ONNX's
LSTM starts from its initial state on every call. GRU has no TFLite builtin at all. And the unrolled ops
(FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD) are what XNNPACK delegates and what the integer path quantizes with
fake-quant ranges. The input projection of all steps is one matmul; each step adds one recurrent
FULLY_CONNECTED and its gate arithmetic, so the op count grows with the sequence length.

Internally everything is ONNX's ``layout=0`` (time-major); ``layout=1`` only relabels the permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout
from edgepack.converters.onnx_to_tf.registry import Node, Value, register

_ACTIVATIONS = {"Sigmoid": tf.math.sigmoid, "Tanh": tf.math.tanh, "Relu": tf.nn.relu}
_TIME_MAJOR, _BATCH_MAJOR = None, (1, 0, 2)  # How X may be stored: [T, B, I] or [B, T, I].


@dataclass
class Direction:
    """One direction's constants, gates stacked along the first axis as ONNX stores them."""

    w: np.ndarray  # [gates*H, I]
    r: np.ndarray  # [gates*H, H]
    input_bias: np.ndarray  # [gates*H], applied with the input projection
    recurrent_bias: np.ndarray  # [gates*H]
    reverse: bool


class Recurrence:
    """What both cells share: attributes, directions, the step inputs and the ONNX-shaped outputs."""

    def __init__(self, node: Node, gates: int, default_activations: list[str]):
        self.node, self.gates = node, gates
        self.integer = bool(node.extra.get("integer"))  # fake-quant around: keep the cell float (float_island_input)
        self.hidden = int(node.constant_input(2, "recurrence weights").shape[1] // gates)
        self.clip = node.attr("clip")
        self.activations = self.activation_functions(default_activations)
        self.x = self.time_major_input()
        self.steps = int(self.x.onnx_shape[0])
        self.check_sequence_lengths()

    def activation_functions(self, default: list[str]) -> list[list]:
        """Per direction, the activation functions (ONNX lists them for all directions, one after another)."""
        names = [str(a) for a in node_attr_list(self.node, "activations")] or default
        unknown = sorted(set(names) - set(_ACTIVATIONS))
        if unknown:
            raise self.node.unsupported(f"activations {unknown} not supported; supported: {', '.join(_ACTIVATIONS)}")
        count = len(default)
        return [[_ACTIVATIONS[n] for n in names[i : i + count]] for i in range(0, len(names), count)]

    def time_major_input(self) -> Value:
        x = self.node.inputs[0]
        return layout.transposed(x, [1, 0, 2]) if self.node.attr("layout", 0) else x

    def check_sequence_lengths(self) -> None:
        lengths = self.node.constant_input(4, "sequence_lens")
        if lengths is not None and np.any(lengths != self.steps):
            raise self.node.unsupported(
                f"sequence_lens {lengths.tolist()} differ from the sequence length {self.steps}; supported: every "
                "sequence full length (export without packed or padded-and-masked sequences)"
            )

    def directions(self, fold_recurrent_bias: list[bool]) -> list[Direction]:
        """Each direction's constants; the recurrent bias of gates marked in ``fold_recurrent_bias`` moves into the
        input projection's bias (it is only ever added), leaving the per-step matmul without it."""
        direction = self.node.attr("direction", "forward")
        w, r = self.node.constant_input(1, "input weights"), self.node.constant_input(2, "recurrence weights")
        bias = self.node.constant_input(3, "bias")
        bias = np.zeros((w.shape[0], 2 * w.shape[1]), np.float32) if bias is None else bias
        reverse = [direction == "reverse"] if direction != "bidirectional" else [False, True]
        size = self.gates * self.hidden
        folded = np.repeat(np.array(fold_recurrent_bias), self.hidden).astype(np.float32)
        return [
            Direction(w[d], r[d], bias[d, :size] + folded * bias[d, size:], (1 - folded) * bias[d, size:], reverse[d])
            for d in range(len(reverse))
        ]

    def initial_state(self, index: int, direction: int):
        """One direction's [B, H] initial state, or None for zeros (which skips the first step's matmul)."""
        value = self.node.input(index)
        if value is None or (value.is_constant and not np.any(value.data)):
            return None
        if value.is_constant:
            return tf.constant(value.data[direction] if not self.node.attr("layout", 0) else value.data[:, direction])
        axis = 1 if self.node.attr("layout", 0) else 0  # Where the direction axis is: [B, D, H] or [D, B, H].
        state = tf.gather(value.data, direction, axis=layout.runtime_axis(axis, 3, value.perm))
        return layout.onnx_order(Value(state, layout.perm_after_dropping(value.perm, [axis])))

    def input_steps(self, direction: Direction) -> list:
        """x_t @ W^T + bias for every step: one matmul over the whole sequence, then unstacked."""
        stored = self.x.perm if self.x.perm in (_TIME_MAJOR, _BATCH_MAJOR) else None
        data, weights = layout.in_perm(self.x, stored), direction.w.T.astype(np.float32)
        if self.integer:  # (-x) @ (-W): see float_island_input
            data, weights = float_island_input(data), -weights
        projected = tf.linalg.matmul(data, weights) + direction.input_bias.astype(np.float32)
        return tf.unstack(projected, axis=0 if stored is None else 1)

    def activate(self, index: int, direction: int, data):
        """Activation ``index`` of ``direction``; ONNX clips the activation's input when ``clip`` is set."""
        data = data if self.clip is None else tf.clip_by_value(data, -self.clip, self.clip)
        return self.activations[min(direction, len(self.activations) - 1)][index](data)

    def outputs(self, sequences: list[list], finals: list[list]) -> list[Value]:
        """Y (ONNX [T, D, B, H], stored batch-major when X was), then each final state ([D, B, H]; with layout=1
        [B, T, D, H] and [B, D, H], which are then stored as they are)."""
        batch_major = self.x.perm == _BATCH_MAJOR
        per_direction = [tf.stack(steps, axis=1 if batch_major else 0) for steps in sequences]
        y = Value(tf.stack(per_direction, axis=2 if batch_major else 1), (2, 0, 1, 3) if batch_major else None)
        batch_major_io = bool(self.node.attr("layout", 0))
        y = layout.transposed(y, [2, 0, 1, 3]) if batch_major_io else y  # Relabel only: no data moves.
        states = [Value(tf.stack(list(s), axis=1 if batch_major_io else 0)) for s in zip(*finals, strict=True)]
        return [y, *states]


def float_island_input(data):
    """The cell computes in float between its quantized input and output, as ONNX's LSTM/GRU does in the QDQ file.
    The TFLite converter does not keep it so on its own: a FULLY_CONNECTED reading a quantized tensor keeps that
    int8/int16 input with float weights and output (LiteRT refuses it at prepare), so the projection reads -x (NEG
    has no grid of its own, so the converter dequantizes before it) and multiplies by -W, which is exact."""
    return tf.math.negative(data)


def float_product(a, b):
    """a * b kept float in an integer graph when both factors come from LOGISTIC/TANH (ops with a fixed output
    grid) and the product reaches a quantized output through same-grid ops (h_t -> PACK -> Y): the converter would
    otherwise quantize both factors to their int8 fixed grids, an error ONNX's float cell does not make. With one
    factor negated the product has no known input grids and stays float; the sign flips are exact."""
    return tf.math.negative(a * tf.math.negative(b))


def node_attr_list(node: Node, key: str) -> list:
    value = node.attr(key)
    return [] if value is None else [v.decode() if isinstance(v, bytes) else v for v in value]


def recurrent_matmul(h, r: np.ndarray, bias: np.ndarray | None = None):
    out = tf.linalg.matmul(h, r.T.astype(np.float32))
    return out if bias is None else out + bias.astype(np.float32)


@register("LSTM")
def lower_lstm(node: Node) -> list[Value]:
    if node.attr("input_forget", 0):
        raise node.unsupported("input_forget=1 not supported")
    cell = Recurrence(node, gates=4, default_activations=["Sigmoid", "Tanh", "Tanh"])
    peepholes = node.constant_input(7, "peepholes")
    sequences, finals = [], []
    for index, direction in enumerate(cell.directions(fold_recurrent_bias=[True] * 4)):
        h, c = cell.initial_state(5, index), cell.initial_state(6, index)
        p = None if peepholes is None else np.split(peepholes[index].astype(np.float32), 3)
        steps = cell.input_steps(direction)
        outputs = [None] * cell.steps
        for t in reversed(range(cell.steps)) if direction.reverse else range(cell.steps):
            h, c = lstm_step(cell, index, direction, steps[t], h, c, p)
            outputs[t] = h
        sequences.append(outputs)
        finals.append((h, c))
    return cell.outputs(sequences, finals)


def lstm_step(cell: Recurrence, index: int, direction: Direction, x_t, h, c, peepholes):
    """One ONNX LSTM step (gates i, o, f, c); a None state is zero, so its terms are left out."""
    gates = x_t if h is None else x_t + recurrent_matmul(h, direction.r)
    i, o, f, g = tf.split(gates, 4, axis=-1)
    if peepholes is not None and c is not None:
        i, f = i + peepholes[0] * c, f + peepholes[2] * c
    i, f = cell.activate(0, index, i), cell.activate(0, index, f)
    c_new = i * cell.activate(1, index, g) if c is None else f * c + i * cell.activate(1, index, g)
    if peepholes is not None:
        o = o + peepholes[1] * c_new
    o, c_activated = cell.activate(0, index, o), cell.activate(2, index, c_new)
    return (float_product(c_activated, o) if cell.integer else o * c_activated), c_new


@register("GRU")
def lower_gru(node: Node) -> list[Value]:
    cell = Recurrence(node, gates=3, default_activations=["Sigmoid", "Tanh"])
    reset_after = bool(node.attr("linear_before_reset", 0))
    sequences, finals = [], []
    for index, direction in enumerate(cell.directions(fold_recurrent_bias=[True, True, not reset_after])):
        h = cell.initial_state(5, index)
        steps = cell.input_steps(direction)
        outputs = [None] * cell.steps
        for t in reversed(range(cell.steps)) if direction.reverse else range(cell.steps):
            h = gru_step(cell, index, direction, steps[t], h, reset_after)
            outputs[t] = h
        sequences.append(outputs)
        finals.append((h,))
    return cell.outputs(sequences, finals)


def gru_step(cell: Recurrence, index: int, direction: Direction, x_t, h, reset_after: bool):
    """One ONNX GRU step (gates z, r, h); torch exports linear_before_reset=1 (reset applied after the matmul)."""
    x_z, x_r, x_h = tf.split(x_t, 3, axis=-1)
    if h is None:  # Zero state: of the recurrent terms only the unfolded bias is left.
        z, r = cell.activate(0, index, x_z), cell.activate(0, index, x_r)
        h_h = direction.recurrent_bias[2 * cell.hidden :]
        return (1.0 - z) * cell.activate(1, index, x_h + r * h_h if reset_after else x_h)
    if reset_after:  # One matmul for all three gates.
        h_z, h_r, h_h = tf.split(recurrent_matmul(h, direction.r, direction.recurrent_bias), 3, axis=-1)
        z, r = cell.activate(0, index, x_z + h_z), cell.activate(0, index, x_r + h_r)
        candidate = cell.activate(1, index, x_h + r * h_h)
    else:
        h_z, h_r = tf.split(recurrent_matmul(h, direction.r[: 2 * cell.hidden]), 2, axis=-1)
        z, r = cell.activate(0, index, x_z + h_z), cell.activate(0, index, x_r + h_r)
        candidate = cell.activate(1, index, x_h + recurrent_matmul(r * h, direction.r[2 * cell.hidden :]))
    return (1.0 - z) * candidate + z * h
