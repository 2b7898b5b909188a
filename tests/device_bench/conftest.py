"""Tiny real models for the benchmark tests: a conv + relu in ONNX and in TFLite, built in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def write_conv_relu_onnx(path: Path) -> Path:
    """x[1,3,8,8] -> Conv(4 filters, 3x3, same padding) -> Relu -> y[1,4,8,8]."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["conv"], ["y"])
    graph = helper.make_graph(
        [conv, relu],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def write_conv_relu_tflite(path: Path) -> Path:
    """x[1,8,8,3] -> conv2d(4 filters, 3x3, SAME) -> relu, converted by the TFLite converter."""
    import tensorflow as tf  # only here: its import takes seconds and nothing else in the suite needs it

    class ConvRelu(tf.Module):
        def __init__(self):
            super().__init__()
            filters = np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32)
            self.filters = tf.Variable(filters)

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="x")])
        def __call__(self, x):
            return tf.nn.relu(tf.nn.conv2d(x, self.filters, strides=1, padding="SAME"))

    module = ConvRelu()
    concrete = module.__call__.get_concrete_function()
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([concrete], module).convert())
    return path


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Path:
    return write_conv_relu_onnx(tmp_path_factory.mktemp("onnx") / "conv_relu.onnx")


@pytest.fixture(scope="session")
def tflite_model(tmp_path_factory) -> Path:
    return write_conv_relu_tflite(tmp_path_factory.mktemp("tflite") / "conv_relu.tflite")
