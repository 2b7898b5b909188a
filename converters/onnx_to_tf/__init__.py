"""ONNX -> TensorFlow lowering: one registered function per ONNX op type, channels-last inside.

Importing this package imports TensorFlow (seconds, hundreds of MB);
``converters.onnx_to_tflite`` does so only when a conversion runs.
"""

from converters.onnx_to_tf import ops_conv, ops_elementwise, ops_pad_resize, ops_pool, ops_shape  # noqa: F401
from converters.onnx_to_tf.graph import LoweredGraph, lower_to_tf
from converters.onnx_to_tf.prepare import PreparedModel, prepare_model
from converters.onnx_to_tf.registry import LOWERINGS

__all__ = ["LOWERINGS", "LoweredGraph", "PreparedModel", "lower_to_tf", "prepare_model"]
