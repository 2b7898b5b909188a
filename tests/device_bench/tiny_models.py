"""Tiny real models for the benchmark and energy tests, built in code: conv + relu in ONNX (float and QDQ int8)
and TFLite (float and full-integer int8), and a few layer kinds (grouped conv, Gemm, MatMul, depthwise, dense)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
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


def calibration_images(shape: list[int], count: int = 8) -> list[np.ndarray]:
    return [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in range(count)]


def write_conv_relu_qdq(path: Path, float_path: Path) -> Path:
    """The float conv + relu quantized by onnxruntime's quantize_static: int8 weights and activations, QDQ."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"x": image} for image in calibration_images([1, 3, 8, 8]))

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(float_path), str(path), Images(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return path


def tflite_bytes(module, representative_shape: list[int] | None = None) -> bytes:
    """Convert a tf.Module's __call__; with a representative shape, full-integer int8 (int8 in and out)."""
    import tensorflow as tf

    concrete = module.__call__.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    if representative_shape is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image] for image in calibration_images(representative_shape))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def conv_relu_module():
    import tensorflow as tf  # only here: its import takes seconds and most tests never need it

    class ConvRelu(tf.Module):
        def __init__(self):
            super().__init__()
            filters = np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32)
            self.filters = tf.Variable(filters)

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="x")])
        def __call__(self, x):
            return tf.nn.relu(tf.nn.conv2d(x, self.filters, strides=1, padding="SAME"))

    return ConvRelu()


def write_conv_relu_tflite(path: Path) -> Path:
    """x[1,8,8,3] -> conv2d(4 filters, 3x3, SAME) -> relu, converted by the TFLite converter."""
    path.write_bytes(tflite_bytes(conv_relu_module()))
    return path


def write_conv_relu_tflite_int8(path: Path) -> Path:
    """The same conv + relu through the converter's full-integer path with a representative dataset."""
    path.write_bytes(tflite_bytes(conv_relu_module(), representative_shape=[1, 8, 8, 3]))
    return path


def write_depthwise_dense_tflite(path: Path) -> Path:
    """x[1,6,6,4] -> depthwise 3x3 (SAME, no bias) -> reshape [1,144] -> matmul [144,5]."""
    import tensorflow as tf

    class DepthwiseDense(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.depthwise = tf.Variable(rng.standard_normal((3, 3, 4, 1)).astype(np.float32))
            self.dense = tf.Variable(rng.standard_normal((144, 5)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 6, 6, 4], tf.float32, name="x")])
        def __call__(self, x):
            features = tf.nn.depthwise_conv2d(x, self.depthwise, strides=[1, 1, 1, 1], padding="SAME")
            return tf.matmul(tf.reshape(features, [1, 144]), self.dense)

    path.write_bytes(tflite_bytes(DepthwiseDense()))
    return path


def write_grouped_conv_gemm_matmul_onnx(path: Path) -> Path:
    """x[1,4,6,6] -> Conv(6 filters, 3x3, groups=2) -> Relu -> Flatten -> Gemm(10, transB) -> MatMul([10,5])."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((6, 2, 3, 3)),
        "b_gemm": rng.standard_normal((10, 216)),
        "c_gemm": rng.standard_normal(10),
        "w_matmul": rng.standard_normal((10, 5)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"]),
        helper.make_node("Gemm", ["flat", "b_gemm", "c_gemm"], ["gemm"], transB=1),
        helper.make_node("MatMul", ["gemm", "w_matmul"], ["y"]),
    ]
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])
    graph = helper.make_graph(nodes, "grouped_conv_gemm_matmul", [x], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
