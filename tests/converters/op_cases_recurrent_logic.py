"""Op cases for ConvTranspose, normalizations, LSTM/GRU, comparisons and logic, and the broadcasting shape ops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tests.converters.conftest import make_model
from tests.converters.op_cases import Case, chain, ints, one, weights

HIDDEN, FEATURES, STEPS, BATCH = 3, 4, 5, 2


def conv_transpose(kernel, shape=(1, 3, 8, 8), expect=(), **attrs) -> Case:
    w = weights(shape[1], 4, *kernel)
    return one("ConvTranspose", ("x", "w", "b"), {"w": w, "b": weights(4)}, shape=list(shape), expect=expect, **attrs)


def recurrent(op: str, directions: int = 1, fed_state: bool = False, layout: int = 0, **attrs) -> Case:
    """One LSTM/GRU node over X [T, B, I] (or [B, T, I] with layout=1), every output requested; an LSTM with
    ``peepholes=True`` gets a P input."""
    gates, peepholes = (4 if op == "LSTM" else 3), attrs.pop("peepholes", False)
    constants = {
        "w": weights(directions, gates * HIDDEN, FEATURES) * 0.5,
        "r": weights(directions, gates * HIDDEN, HIDDEN) * 0.5,
        "b": weights(directions, 2 * gates * HIDDEN),
        **({"p": weights(directions, 3 * HIDDEN)} if peepholes else {}),
    }
    x_shape = [STEPS, BATCH, FEATURES] if layout == 0 else [BATCH, STEPS, FEATURES]
    state_shape = [directions, BATCH, HIDDEN] if layout == 0 else [BATCH, directions, HIDDEN]
    state_names = ["h0", "c0"][: 2 if op == "LSTM" else 1]
    fed = {"x": x_shape, **({name: state_shape for name in state_names} if fed_state else {})}
    inputs = ["x", "w", "r", "b", "", *(state_names if fed_state else ["", ""][: len(state_names)])]
    inputs = inputs + ["p"] if peepholes else inputs
    outputs = ["y0", "y1", "y2"][: 3 if op == "LSTM" else 2]
    direction = {1: attrs.pop("direction", "forward"), 2: "bidirectional"}[directions]
    node = helper.make_node(
        op, inputs, outputs, hidden_size=HIDDEN, direction=direction, layout=layout, name=f"{op.lower()}_node", **attrs
    )
    return Case(make_model([node], fed, outputs, constants), ("FULLY_CONNECTED",), label=f"{op}:{attrs}")


def to_float(node_type: str, operands, constants=None, shape=None) -> Case:
    """A boolean-valued op made visible: its result cast to float (ONNX runtime outputs bool otherwise)."""
    nodes = [helper.make_node(node_type, list(operands), ["b"]), helper.make_node("Cast", ["b"], ["y0"], to=1)]
    return chain(nodes, constants, **({"shape": shape} if shape else {}))


def is_inf(**attrs) -> Case:
    """Infinities of both signs (exp overflowing: +inf for x > 0, -inf for x < 0), found as IsInf with ``attrs`` and
    made visible as floats. (A division by a constant zero would not do: the converter's 1/0 constant is no inf.)"""
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["up"]),
        helper.make_node("Neg", ["up"], ["down"]),
        helper.make_node("Exp", ["up"], ["e_up"]),
        helper.make_node("Exp", ["down"], ["e_down"]),
        helper.make_node("Sub", ["e_up", "e_down"], ["d"]),
        helper.make_node("IsInf", ["d"], ["b"], **attrs),
        helper.make_node("Cast", ["b"], ["y0"], to=1),
    ]
    return chain(nodes, {"big": np.float32(1e4)})


def signs() -> list[onnx.NodeProto]:
    """x > 0 and x < 0.5: two boolean tensors to combine."""
    return [helper.make_node("Greater", ["x", "zero"], ["p"]), helper.make_node("Less", ["x", "half"], ["q"])]


def logical(op: str) -> Case:
    nodes = [*signs(), helper.make_node(op, ["p", "q"], ["b"]), helper.make_node("Cast", ["b"], ["y0"], to=1)]
    return chain(nodes, {"zero": np.float32(0), "half": np.float32(0.5)}, expect=(f"LOGICAL_{op.upper()}",))


def embedding_lookup() -> Case:
    """Gather from a constant table with fed int64 ids (what embeddings export to)."""
    node = helper.make_node("Gather", ["table", "ids"], ["y0"], axis=0)
    model = make_model(
        [node], {"ids": [2, 6]}, ["y0"], {"table": weights(5, 4)}, input_types={"ids": onnx.TensorProto.INT64}
    )
    return Case(model, ("GATHER",), label="Gather:fed ids")


MORE_CASES: dict[str, list[Case]] = {
    "ConvTranspose": [
        conv_transpose([2, 2], strides=[2, 2], expect=("TRANSPOSE_CONV",)),
        conv_transpose([4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),  # TF SAME lines up: one op.
        conv_transpose([3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], expect=("STRIDED_SLICE",)),
        conv_transpose([3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        conv_transpose([3, 3], strides=[2, 2], output_shape=[16, 16]),
        conv_transpose([3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
        conv_transpose([3, 3], pads=[1, 1, 1, 1]),
        conv_transpose([3], shape=(1, 3, 16), strides=[2], pads=[1, 1], expect=("TRANSPOSE_CONV",)),
    ],
    "LayerNormalization": [
        one("LayerNormalization", ("x", "g", "b"), {"g": weights(8), "b": weights(8)}, shape=[2, 5, 8], epsilon=1e-5),
        one("LayerNormalization", ("x", "g"), {"g": weights(3, 8, 8)}, axis=1, expect=("RSQRT",)),
    ],
    "InstanceNormalization": [
        one("InstanceNormalization", ("x", "s", "b"), {"s": weights(3), "b": weights(3)}, expect=("MEAN",)),
    ],
    "LSTM": [
        recurrent("LSTM"),
        recurrent("LSTM", directions=2, fed_state=True),
        recurrent("LSTM", fed_state=True, direction="reverse"),
        recurrent("LSTM", clip=0.5),
        recurrent("LSTM", fed_state=True, peepholes=True),
        recurrent("LSTM", peepholes=True),
    ],
    "GRU": [
        recurrent("GRU", linear_before_reset=1),
        recurrent("GRU", linear_before_reset=0, fed_state=True),
        recurrent("GRU", directions=2, linear_before_reset=1, fed_state=True),
    ],
    "Equal": [
        chain(
            [
                helper.make_node("Cast", ["x"], ["i"], to=onnx.TensorProto.INT32),
                helper.make_node("Equal", ["i", "zero"], ["b"]),
                helper.make_node("Cast", ["b"], ["y0"], to=onnx.TensorProto.FLOAT),
            ],
            {"zero": np.int32(0)},
            expect=("EQUAL",),
        )
    ],
    "Less": [to_float("Less", ["x", "c"], {"c": weights(3, 1, 1)})],
    "LessOrEqual": [to_float("LessOrEqual", ["x", "c"], {"c": weights(1, 3, 8, 8)})],
    "Greater": [to_float("Greater", ["x", "c"], {"c": weights(8)})],
    "GreaterOrEqual": [to_float("GreaterOrEqual", ["x", "c"], {"c": np.float32(0.2)}, shape=[2, 7])],
    "And": [logical("And")],
    "Or": [logical("Or")],
    "Xor": [
        chain(
            [*signs(), helper.make_node("Xor", ["p", "q"], ["b"]), helper.make_node("Cast", ["b"], ["y0"], to=1)],
            {"zero": np.float32(0), "half": np.float32(0.5)},
        )
    ],  # fmt: skip
    "Not": [
        chain(
            [*signs()[:1], helper.make_node("Not", ["p"], ["b"]), helper.make_node("Cast", ["b"], ["y0"], to=1)],
            {"zero": np.float32(0)},
        )  # The TFLite converter folds Not(Greater) into LESS_EQUAL.
    ],
    "Where": [
        chain(
            [*signs()[:1], helper.make_node("Where", ["p", "x", "low"], ["y0"])],
            {"zero": np.float32(0), "low": np.float32(-10.0)},
            expect=("SELECT_V2",),
        ),
        chain(
            [*signs()[:1], helper.make_node("Where", ["p", "c", "x"], ["y0"])],
            {"zero": np.float32(0), "c": weights(3, 1, 1)},
        ),
    ],
    "Expand": [
        one("Expand", ("x", "s"), {"s": ints(2, 3, 8, 8)}, shape=[1, 3, 1, 8], expect=("BROADCAST_TO",)),
        one("Expand", ("x", "s"), {"s": ints(2, 3, 4)}, shape=[3, 1]),
    ],
    "Tile": [one("Tile", ("x", "r"), {"r": ints(1, 2, 1, 3)}, expect=("TILE",))],
    "Gather": [embedding_lookup()],
    # NaN from the square root of the negative inputs, replaced as torch's boolean-mask SDPA export does.
    "IsNaN": [
        chain(
            [
                helper.make_node("Sqrt", ["x"], ["s"]),
                helper.make_node("IsNaN", ["s"], ["b"]),
                helper.make_node("Where", ["b", "zero", "s"], ["y0"]),
            ],
            {"zero": np.float32(0)},
        )
    ],
    "IsInf": [is_inf(), is_inf(detect_negative=0), is_inf(detect_positive=0)],
    "CumSum": [
        one("CumSum", ("x", "axis"), {"axis": ints(1)}, expect=("CUMSUM",)),
        one("CumSum", ("x", "axis"), {"axis": ints(-1)}, shape=[2, 7], exclusive=1, reverse=1),
    ],
}
