"""Every registered ONNX op: a one-node (or few-node) graph, converted, run in LiteRT, compared with onnxruntime.

Parametrized over the registry itself, so registering an op without a case here (or in op_cases_recurrent_logic.py)
fails the suite.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgepack.converters.onnx_to_tf.registry import LOWERINGS
from onnx import helper

from tests.converters.conftest import convert_and_compare
from tests.converters.op_cases import INT_MAX, Case, binary, chain, ints, one, resize_2x, unary, weights
from tests.converters.op_cases_recurrent_logic import MORE_CASES

CASES: dict[str, list[Case]] = {
    "Conv": [
        one("Conv", ("x", "w", "b"), {"w": weights(4, 3, 3, 3), "b": weights(4)}, expect=("CONV_2D",), pads=[1] * 4),
        one("Conv", ("x", "w"), {"w": weights(4, 3, 3, 3)}, expect=("CONV_2D", "PAD"), strides=[2, 2], pads=[1] * 4),
        one("Conv", ("x", "w"), {"w": weights(6, 1, 3, 3)}, expect=("DEPTHWISE_CONV_2D",), group=3, pads=[1] * 4),
        one("Conv", ("x", "w"), {"w": weights(4, 3, 3, 3)}, shape=[1, 6, 8, 8], expect=("CONV_2D",), group=2),
        one("Conv", ("x", "w"), {"w": weights(4, 3, 3, 3)}, auto_pad="SAME_UPPER", strides=[2, 2]),
        one("Conv", ("x", "w"), {"w": weights(4, 3, 3, 3)}, pads=[2] * 4, dilations=[2, 2]),
        one("Conv", ("x", "w"), {"w": weights(4, 3, 3)}, shape=[1, 3, 16], expect=("CONV_2D",), pads=[1, 1]),
        one(
            "Conv",
            ("x", "w"),
            {"w": weights(3, 1, 5)},
            shape=[1, 3, 17],
            group=3,
            strides=[2],
            pads=[2, 2],
            expect=("DEPTHWISE_CONV_2D",),
        ),  # fmt: skip
        one("Conv", ("x", "w"), {"w": weights(3, 1, 3, 3)}, shape=[1, 3, 9, 9], group=3, strides=[1, 2], pads=[1] * 4),
        one("Conv", ("x", "w"), {"w": weights(6, 1, 3, 3)}, group=3, strides=[2, 1], auto_pad="SAME_UPPER"),
    ],
    "Gemm": [
        one(
            "Gemm",
            ("x", "w", "b"),
            {"w": weights(5, 6), "b": weights(5)},
            shape=[2, 6],
            expect=("FULLY_CONNECTED",),
            transB=1,
            alpha=0.5,
            beta=2.0,
        ),
        one("Gemm", ("x", "w"), {"w": weights(2, 5)}, shape=[2, 3], transA=1),
    ],
    "MatMul": [
        one("MatMul", ("x", "w"), {"w": weights(6, 5)}, shape=[2, 4, 6], expect=("FULLY_CONNECTED",)),
        one("MatMul", ("x", "z"), shape=[2, 4, 4], expect=("BATCH_MATMUL",)),
        one("MatMul", ("x", "w"), {"w": weights(6)}, shape=[2, 4, 6]),
        one("MatMul", ("w", "x"), {"w": weights(4)}, shape=[2, 4, 6]),
    ],
    "BatchNormalization": [
        one(
            "BatchNormalization",
            ("x", "g", "b", "m", "v"),
            {"g": weights(3), "b": weights(3), "m": weights(3), "v": np.abs(weights(3)) + 0.5},
            epsilon=1e-3,
        ),
    ],
    "Relu": unary("Relu", "RELU"),
    "Sigmoid": unary("Sigmoid", "LOGISTIC"),
    "Tanh": unary("Tanh", "TANH"),
    "Sqrt": unary("Sqrt", "SQRT", positive=True),
    "Neg": unary("Neg", "NEG"),
    "Exp": unary("Exp", "EXP"),
    "Abs": unary("Abs", "ABS"),
    "Erf": unary("Erf", ""),
    "HardSwish": unary("HardSwish", "HARD_SWISH"),
    "HardSigmoid": unary("HardSigmoid", "", alpha=0.3, beta=0.4),
    "LeakyRelu": unary("LeakyRelu", "LEAKY_RELU", alpha=0.2),
    "Gelu": unary("Gelu", "GELU", opset=20) + unary("Gelu", "GELU", opset=20, approximate="tanh"),
    "PRelu": [one("PRelu", ("x", "s"), {"s": weights(3, 1, 1)})],
    "Clip": [
        one("Clip", ("x", "lo", "hi"), {"lo": np.float32(0), "hi": np.float32(6)}, expect=("RELU6",)),
        one("Clip", ("x", "lo", "hi"), {"lo": np.float32(-0.5), "hi": np.float32(0.7)}, expect=("MINIMUM",)),
        one("Clip", ("x", "lo"), {"lo": np.float32(0)}, expect=("RELU",)),
    ],
    "Add": binary("Add", "ADD"),
    "Sub": binary("Sub", "SUB"),
    "Mul": binary("Mul", "MUL"),
    "Div": binary("Div", "")[:1] + [one("Div", ("x", "z"), positive=True, expect=("DIV",))],
    "Pow": [
        one("Pow", ("x", "e"), {"e": np.float32(2.0)}, expect=("SQUARE",)),
        one("Pow", ("x", "e"), {"e": np.float32(1.5)}, positive=True, expect=("POW",)),
    ],
    "Max": [one("Max", ("x", "z", "c"), {"c": weights(8)}, expect=("MAXIMUM",))],
    "Min": [one("Min", ("x", "z"), expect=("MINIMUM",))],
    "MaxPool": [
        one("MaxPool", expect=("MAX_POOL_2D",), kernel_shape=[2, 2], strides=[2, 2]),
        one("MaxPool", shape=[1, 3, 9, 9], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
        one("MaxPool", shape=[1, 3, 8, 8], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        one("MaxPool", shape=[1, 3, 16], kernel_shape=[3], strides=[2], pads=[1, 1]),
    ],
    "AveragePool": [
        one("AveragePool", expect=("AVERAGE_POOL_2D",), kernel_shape=[2, 2], strides=[2, 2]),
        one("AveragePool", kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4, count_include_pad=0),
        one("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4, count_include_pad=1),
        one("AveragePool", shape=[1, 3, 9, 9], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        one("AveragePool", shape=[1, 3, 8, 8], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1),
    ],
    "GlobalAveragePool": unary("GlobalAveragePool", "MEAN"),
    "GlobalMaxPool": unary("GlobalMaxPool", "REDUCE_MAX"),
    "ReduceMean": [
        one("ReduceMean", expect=("MEAN",), axes=[2, 3], keepdims=0),
        one("ReduceMean", ("x", "a"), {"a": ints(1)}, opset=18),
    ],
    "ReduceMax": [one("ReduceMax", expect=("REDUCE_MAX",), axes=[1], keepdims=1)],
    "ReduceMin": [one("ReduceMin", expect=("REDUCE_MIN",), axes=[-1], keepdims=0)],
    "ReduceSum": [one("ReduceSum", ("x", "a"), {"a": ints(2, 3)}, expect=("SUM",), keepdims=1)],
    "Softmax": [one("Softmax", expect=("SOFTMAX",), axis=1), one("Softmax", shape=[2, 10], axis=-1)],
    "Reshape": [
        one("Reshape", ("x", "s"), {"s": ints(0, 3, -1)}, expect=("RESHAPE",)),
        one("Reshape", ("x", "s"), {"s": ints(1, -1)}, shape=[1, 4, 1, 1], expect=("RESHAPE",)),
    ],
    "Flatten": [one("Flatten", axis=1), one("Flatten", shape=[2, 3, 4], axis=2)],
    "Transpose": [
        chain(
            [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), helper.make_node("Relu", ["t"], ["y0"])]
        ),
        one("Transpose", shape=[2, 3, 4], perm=[1, 0, 2], expect=("TRANSPOSE",)),
    ],
    "Concat": [
        one("Concat", ("x", "z"), expect=("CONCATENATION",), axis=1),
        one("Concat", ("x", "c"), {"c": weights(1, 3, 2, 8)}, axis=-2),
    ],
    "Split": [
        one("Split", ("x", "s"), {"s": ints(1, 2)}, outputs=2, expect=("SPLIT_V",), axis=1),
        one("Split", outputs=3, opset=18, axis=2, num_outputs=3),
    ],
    "Slice": [
        one(
            "Slice",
            ("x", "st", "en", "ax", "sp"),
            {"st": ints(1, -6), "en": ints(INT_MAX, -1), "ax": ints(1, 3), "sp": ints(1, 2)},
            expect=("STRIDED_SLICE",),
        ),
        one(
            "Slice",
            ("x", "st", "en", "ax", "sp"),
            {"st": ints(-1), "en": ints(-INT_MAX), "ax": ints(2), "sp": ints(-1)},
        ),
    ],
    "Squeeze": [
        one("Squeeze", ("x", "a"), {"a": ints(2)}, shape=[1, 3, 1, 8]),
        one("Squeeze", shape=[1, 5, 1, 1]),
    ],
    "Unsqueeze": [one("Unsqueeze", ("x", "a"), {"a": ints(1, -1)}, shape=[2, 5], expect=("RESHAPE",))],
    "Pad": [
        one("Pad", ("x", "p", "v"), {"p": ints(0, 0, 1, 2, 0, 0, 3, 0), "v": np.float32(0.5)}, mode="constant"),
        one("Pad", ("x", "p"), {"p": ints(0, 0, 2, 1, 0, 0, 1, 2)}, expect=("MIRROR_PAD",), mode="reflect"),
        one("Pad", ("x", "p"), {"p": ints(0, 0, 2, 1, 0, 0, 1, 2)}, mode="edge"),
    ],
    "Resize": [
        resize_2x(
            expect=("RESIZE_NEAREST_NEIGHBOR",),
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        one("Resize", ("x", "", "", "z"), {"z": ints(1, 3, 12, 20)}, expect=("RESIZE_BILINEAR",), mode="linear"),
        resize_2x(mode="linear", coordinate_transformation_mode="align_corners"),
        resize_2x(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil"),
        one(
            "Resize",
            ("x", "", "", "z"),
            {"z": ints(1, 3, 12, 20)},
            mode="nearest",
            coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_ceil",
        ),  # fmt: skip
        one(
            "Resize",
            ("x", "roi", "s", "z"),
            {"roi": np.zeros(0, np.float32), "s": np.zeros(0, np.float32), "z": ints(1, 3, 5, 13)},
            mode="nearest",
            opset=11,
            coordinate_transformation_mode="tf_half_pixel_for_nn",
            nearest_mode="floor",
        ),  # fmt: skip
        resize_2x(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    ],
    "Identity": [chain([helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y0"])])],
    "Dropout": [chain([helper.make_node("Dropout", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y0"])])],
    "Constant": [
        chain(
            [
                helper.make_node(
                    "Constant", [], ["k"], value=helper.make_tensor("k", onnx.TensorProto.FLOAT, [3, 1, 1], [1, 2, 3])
                ),
                helper.make_node("Mul", ["x", "k"], ["y0"]),
            ]
        )
    ],
    "Cast": [
        chain(
            [
                helper.make_node("Cast", ["x"], ["i"], to=onnx.TensorProto.INT32),
                helper.make_node("Cast", ["i"], ["y0"], to=onnx.TensorProto.FLOAT),
            ],
            expect=("CAST",),
        )
    ],
    "Gather": [
        one("Gather", ("x", "i"), {"i": np.array(1, np.int64)}, axis=1),
        one("Gather", ("x", "i"), {"i": ints(2, 0)}, axis=1, expect=("GATHER",)),
    ],
}


for _op_type, _cases in MORE_CASES.items():
    CASES.setdefault(_op_type, []).extend(_cases)


def test_every_registered_op_has_a_case():
    assert sorted(set(LOWERINGS) - set(CASES)) == []


@pytest.mark.parametrize("op_type", sorted(LOWERINGS))
def test_op_matches_onnxruntime(op_type, tmp_path):
    for index, case in enumerate(CASES.get(op_type, [])):
        onnx_path, tflite_path = tmp_path / f"{index}.onnx", tmp_path / f"{index}.tflite"
        onnx.save(case.model, onnx_path)
        result = convert_and_compare(onnx_path, tflite_path, positive=case.positive)
        assert result.max_error <= result.tolerance, f"case {index} ({case.label}): error {result.max_error:.3g}"
        missing = [op for op in case.expect if not result.conversion.op_counts.get(op)]
        assert not missing, f"case {index} ({case.label}): {missing} not in {result.conversion.op_counts}"
