"""ONNX -> TensorFlow lowering: one registered function per ONNX op type, channels-last inside.

Importing this package imports TensorFlow (seconds, hundreds of MB);
``converters.onnx_to_tflite`` does so only when a conversion runs.
"""

from edgepack.converters.onnx_to_tf import (  # noqa: F401  (importing registers the lowerings)
    ops_conv,
    ops_elementwise,
    ops_logic,
    ops_norm,
    ops_pad_resize,
    ops_pool,
    ops_recurrent,
    ops_shape,
)
from edgepack.converters.onnx_to_tf.graph import LoweredGraph, lower_to_tf
from edgepack.converters.onnx_to_tf.prepare import PreparedModel, prepare_model
from edgepack.converters.onnx_to_tf.registry import LOWERINGS

__all__ = ["LOWERINGS", "LoweredGraph", "PreparedModel", "lower_to_tf", "prepare_model"]
