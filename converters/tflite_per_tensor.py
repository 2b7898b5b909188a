"""Per-tensor int8 weights in a TFLite file converted from a fake-quant graph.

The converter quantizes weights per channel on this path and ignores ``_experimental_disable_per_channel`` (that
flag reaches only its calibrating quantizer). So edgepack first snaps every layer weight of the float graph onto
its per-tensor grid (``weight_params(w, None)``: k x s with s = max|w| / 127), lets the converter write per-channel
integers q_c with scales s_c <= s, then rewrites them as round(q_c x s_c / s) with the one scale s. Because
|q_c x s_c - k x s| <= s_c / 2 < s / 2, that rounding gives back exactly k: the file holds edgepack's per-tensor
integers. Biases (scale input_scale x s_c) are re-expressed on input_scale x s the same way.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from edgepack.converters.tflite_patch import BIAS_INPUT

from edgepack.core.quantization import weight_params

WEIGHT_INPUT = {  # onnx op -> weight input; TFLite op -> weight input
    "Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1,
    schema.BuiltinOperator.CONV_2D: 1, schema.BuiltinOperator.DEPTHWISE_CONV_2D: 1,
    schema.BuiltinOperator.FULLY_CONNECTED: 1, schema.BuiltinOperator.TRANSPOSE_CONV: 1,
}  # fmt: skip
NUMPY_TYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}


def snap_weights_to_tensor_grid(graph, constants: dict[str, np.ndarray]) -> None:
    """Replace each constant layer weight by its per-tensor fake-quantized values (in ``constants``, in place)."""
    for node in graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in constants:
            weight = constants[node.input[index]]
            if weight.dtype == np.float32:
                constants[node.input[index]] = weight_params(weight, None).fake_quantize(weight)


def per_tensor_weights(tflite_bytes: bytes) -> bytes:
    """Rewrite every per-channel int8 layer weight (and its bias) of the file with one scale per tensor."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    done: set[int] = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            _rescale_layer(model, subgraph, op, done)
    if not done:
        return tflite_bytes
    builder = flatbuffers.Builder(len(tflite_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _rescale_layer(model, subgraph, op, done: set[int]) -> None:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin not in WEIGHT_INPUT or len(op.inputs) <= WEIGHT_INPUT[builtin]:
        return
    weight_index = op.inputs[WEIGHT_INPUT[builtin]]
    weight = subgraph.tensors[weight_index]
    channel_scales = _channel_scales(weight)
    if weight_index in done or channel_scales is None:
        return
    scale = np.float32(channel_scales.max())
    _requantize(model, weight, channel_scales / scale, scale, limit=127)
    done.add(weight_index)
    bias_position = BIAS_INPUT.get(builtin)
    if bias_position is not None and len(op.inputs) > bias_position and op.inputs[bias_position] >= 0:
        bias = subgraph.tensors[op.inputs[bias_position]]
        bias_scales = _channel_scales(bias)
        if bias_scales is not None:  # input_scale x s_c per channel -> input_scale x s
            _requantize(model, bias, bias_scales / bias_scales.max(), np.float32(bias_scales.max()))


def _channel_scales(tensor) -> np.ndarray | None:
    quantization = tensor.quantization
    if tensor.type not in NUMPY_TYPES or quantization is None or quantization.scale is None:
        return None
    scales = np.asarray(quantization.scale, np.float64)
    return scales if scales.size > 1 else None


def _requantize(model, tensor, ratios: np.ndarray, scale: np.float32, limit: int | None = None) -> None:
    """Integers q_c on scale s_c become round(q_c x s_c / s) on the one scale s (``ratios`` = s_c / s)."""
    dtype = NUMPY_TYPES[tensor.type]
    buffer = model.buffers[tensor.buffer]
    values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), dtype).reshape(tensor.shape)
    shape = [1] * values.ndim
    shape[tensor.quantization.quantizedDimension] = -1
    requantized = np.round(values.astype(np.float64) * ratios.reshape(shape))
    if limit is not None:
        requantized = np.clip(requantized, -limit, limit)
    buffer.data = np.frombuffer(requantized.astype(dtype).tobytes(), np.uint8)
    tensor.quantization.scale = [float(scale)]
    tensor.quantization.zeroPoint = [0]
    tensor.quantization.quantizedDimension = 0
