"""Fix-ups of the TFLite converter's 16x8 output from fake-quant graphs; without them LiteRT refuses to prepare it.

Biases: from a fake-quant (QAT-style) graph the converter writes int32 biases, but LiteRT's 16x8 kernels for
DEPTHWISE_CONV_2D (and, by the 16x8 spec, conv / fully-connected / transpose-conv) take int64 biases. Widening
int32 -> int64 keeps every value (the scale stays input_scale x weight_scale, the zero point 0).

LOGISTIC: the converter gives a 16-bit LOGISTIC the output grid [0, 1) as scale 1/65536, zero point -32768 (and
requantizes to the fake-quant's grid after it), but LiteRT's int16 kernel writes only scale 1/32768, zero point 0
(activations.cc: 'output->params.scale == 1. / 32768'), which is also the grid edgepack's plan gives a Sigmoid
(calibration.plan.fixed_output_params) and the ONNX QDQ file holds. The output tensor takes that grid; its
readers read the tensor's own parameters, so they follow.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

BIAS_INPUT = {
    schema.BuiltinOperator.CONV_2D: 2,
    schema.BuiltinOperator.DEPTHWISE_CONV_2D: 2,
    schema.BuiltinOperator.FULLY_CONNECTED: 2,
    schema.BuiltinOperator.TRANSPOSE_CONV: 3,
}
DATA_INPUT = {schema.BuiltinOperator.TRANSPOSE_CONV: 2}  # the others read their activation at input 0


INT16_FIXED_SCALE = {schema.BuiltinOperator.LOGISTIC: 1.0 / 32768}  # output grids LiteRT's int16 kernels require


def patch_16x8(tflite_bytes: bytes) -> bytes:
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            changed |= _widen_bias(model, subgraph, op)
            changed |= _fixed_output_grid(model, subgraph, op)
    if not changed:
        return tflite_bytes
    builder = flatbuffers.Builder(len(tflite_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _builtin(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _fixed_output_grid(model, subgraph, op) -> bool:
    scale = INT16_FIXED_SCALE.get(_builtin(model, op))
    output = subgraph.tensors[op.outputs[0]] if scale is not None else None
    if output is None or output.type != schema.TensorType.INT16 or output.quantization is None:
        return False
    if np.allclose(output.quantization.scale, scale, rtol=1e-6, atol=0) and not np.any(output.quantization.zeroPoint):
        return False
    output.quantization.scale, output.quantization.zeroPoint = [scale], [0]
    return True


def _widen_bias(model, subgraph, op) -> bool:
    builtin = _builtin(model, op)
    if builtin not in BIAS_INPUT or len(op.inputs) <= BIAS_INPUT[builtin] or op.inputs[BIAS_INPUT[builtin]] < 0:
        return False
    data = subgraph.tensors[op.inputs[DATA_INPUT.get(builtin, 0)]]
    bias = subgraph.tensors[op.inputs[BIAS_INPUT[builtin]]]
    if data.type != schema.TensorType.INT16 or bias.type != schema.TensorType.INT32:
        return False
    buffer = model.buffers[bias.buffer]
    values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32).astype(np.int64)
    buffer.data = np.frombuffer(values.tobytes(), np.uint8)
    bias.type = schema.TensorType.INT64
    return True
