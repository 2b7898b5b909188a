"""edgepack's own entry in a .tflite file's metadata: the ONNX name and layout of each signature tensor.

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
