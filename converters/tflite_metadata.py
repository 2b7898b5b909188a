"""What a .tflite file says about itself without running it: edgepack's own metadata entry (the ONNX name and layout
of each signature tensor) and the file's precision, read from its tensor types.

A TFLite file alone cannot say that its input ``t_onnx__Conv_0`` is ONNX's ``onnx::Conv_0`` fed as NHWC; this
small JSON record lets any reader of the file (sessions, verification, the manifest) map back without the
ONNX. It needs only flatbuffers and ai_edge_litert's bundled schema: reading it never imports TensorFlow.
"""

from __future__ import annotations

import json

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

METADATA_NAME = "edgepack.io"


def with_io_metadata(tflite_bytes: bytes, record: dict) -> bytes:
    """The model with ``record`` stored as JSON under METADATA_NAME (replacing an older record)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(record).encode("utf-8"))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(len(tflite_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_io_metadata(tflite_bytes: bytes) -> dict | None:
    """The record written by with_io_metadata, or None for a file edgepack did not write."""
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
    return None


def read_min_runtime_version(tflite_bytes: bytes) -> str | None:
    """The oldest TFLite runtime the converter says runs this model (its 'min_runtime_version' entry)."""
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"min_runtime_version":
            text = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().rstrip(b"\0").decode("ascii")
            return text or None
    return None


def tflite_precision(tflite_bytes: bytes) -> str:
    """fp32, fp16 (float16 weights), dynamic_int8 (int8 weights, float activations), int8 or int16x8.

    Activations are the main subgraph's computed tensors (buffers without data); weights are the constant ones.
    A full-integer model with float inputs still has int8 activations inside (after its QUANTIZE op).
    """
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    subgraph = model.Subgraphs(0)
    activations, weights = set(), set()
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        buffer = model.Buffers(tensor.Buffer())
        is_constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
        (weights if is_constant else activations).add(tensor.Type())
    if schema.TensorType.INT16 in activations:
        return "int16x8"
    if activations & {schema.TensorType.INT8, schema.TensorType.UINT8}:
        return "int8"
    if schema.TensorType.INT8 in weights:
        return "dynamic_int8"
    return "fp16" if schema.TensorType.FLOAT16 in weights else "fp32"
