"""Artifacts: a file plus what an app and the next stage need to know about it.

Every artifact is written atomically (a temp file in the same folder, then ``os.replace``) so an interrupted run
never leaves a half-written model where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Format(StrEnum):
    TORCH = "torch"
    ONNX = "onnx"
    SAVED_MODEL = "saved_model"
    TFLITE = "tflite"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"  # float16 weights (a .tflite made by another tool)
    DYNAMIC_INT8 = "dynamic_int8"  # int8 weights, float activations (another tool's dynamic-range .tflite)
    INT8 = "int8"
    INT16X8 = "int16x8"


class Quantization(BaseModel):
    """Affine quantization of an integer tensor: real = scale * (q - zero_point)."""

    model_config = ConfigDict(extra="forbid")
    scale: list[float]
    zero_point: list[int]
    axis: int | None = Field(None, description="Channel axis for per-channel parameters; None for per-tensor.")


class TensorSpec(BaseModel):
    """One input or output tensor as the artifact's own runtime sees it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Name used to feed or fetch the tensor (the ONNX name; the TFLite signature key).")
    shape: list[int] = Field(description="Shape in the runtime's own layout; -1 for a dynamic dimension.")
    dtype: str = Field(description="numpy dtype name, e.g. float32, int8, int64.")
    layout: str | None = Field(None, description="Axis order such as NCHW or NHWC where it matters; None otherwise.")
    perm_from_onnx: list[int] | None = Field(
        None,
        description="runtime_array = onnx_array.transpose(perm_from_onnx); None when the layouts are the same.",
    )
    quantization: Quantization | None = None
    tensor_name: str | None = Field(None, description="The runtime's internal tensor name, where it differs.")


def to_runtime_layout(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An array in the ONNX/torch layout, transposed to the layout the artifact's runtime expects."""
    return array if spec.perm_from_onnx is None else np.transpose(array, spec.perm_from_onnx)


def from_runtime_layout(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An array produced by the artifact's runtime, transposed back to the ONNX/torch layout."""
    return array if spec.perm_from_onnx is None else np.transpose(array, np.argsort(spec.perm_from_onnx))


class Artifact(BaseModel):
    """A model file written by a stage, with its lineage and interface."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique short name within the run, e.g. 'onnx-fp32'.")
    format: Format
    precision: Precision = Precision.FP32
    path: str = Field(description="File path relative to the run folder ('' for the in-memory torch model).")
    sha256: str
    bytes: int
    parent: str | None = Field(None, description="Name of the artifact this one was made from.")
    stage: str = Field(description="The stage that wrote it.")
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    op_counts: dict[str, int] = {}
    details: dict = Field({}, description="Stage-specific facts (opset, conversion seconds, ...).")


def ancestors(artifacts: list[Artifact], artifact: Artifact) -> Iterator[Artifact]:
    """The artifacts ``artifact`` was made from, nearest first (its parent, the parent's parent, ...)."""
    by_name = {a.name: a for a in artifacts}
    current = by_name.get(artifact.parent) if artifact.parent else None
    while current is not None:
        yield current
        current = by_name.get(current.parent) if current.parent else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success rename it into place, on failure remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the finished file gets the mode any other file would
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(current)
    return current


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: Path, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))
