"""A fix-up of the TFLite converter's 16x8 output from fake-quant graphs.

From a fake-quant (QAT-style) graph the converter writes int32 biases, but LiteRT's 16x8 kernels for
DEPTHWISE_CONV_2D (and, by the 16x8 spec, conv / fully-connected / transpose-conv) take int64 biases: the model
fails to prepare. Widening int32 -> int64 keeps every value (the scale stays input_scale x weight_scale, the
zero point 0), so the file is exactly what the 16x8 spec asks for.
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


def widen_16x8_biases(tflite_bytes: bytes) -> bytes:
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            changed |= _widen_bias(model, subgraph, op)
    if not changed:
        return tflite_bytes
    builder = flatbuffers.Builder(len(tflite_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _widen_bias(model, subgraph, op) -> bool:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
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
