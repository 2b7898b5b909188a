"""ONNX -> TFLite (float32) through our own ONNX -> TensorFlow lowering.

We own the lowering (rather than onnx2tf or litert-torch) so the integer path can place fake-quant nodes with
edgepack's calibration ranges, giving the TFLite file the same scales as the ONNX QDQ file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from converters.runtime import TFLiteSession, count_tflite_ops
from converters.tflite_metadata import with_io_metadata
from converters.tflite_patch import widen_16x8_biases
from edgepack.artifacts import TensorSpec, write_bytes_atomic
from edgepack.errors import StageError


@dataclass
class FakeQuantization:
    """Integer conversion from edgepack's own ranges: tensor name -> (min, max) of its integer grid.

    The ranges must be the representable ranges of edgepack's parameters (``QuantParams.representable_range``),
    from which TensorFlow recomputes exactly edgepack's scale and zero point. Weights are left to the converter,
    whose per-channel symmetric int8 (max|w| / 127) is edgepack's own rule for weights.
    """

    ranges: dict[str, tuple[float, float]]
    bits: int = 8  # 8: full int8; 16: 16-bit activations with int8 weights (16x8)
    integer_io: bool = False  # int8/int16 model inputs and outputs instead of float ones


@dataclass
class TFLiteConversion:
    """What the conversion wrote, described from the TFLite side (layout, signature keys)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: dict[str, int]
    seconds: float


def convert_onnx_to_tflite(
    onnx_path: Path,
    out_path: Path,
    input_shapes: dict[str, list[int]] | None = None,
    quantization: FakeQuantization | None = None,
) -> TFLiteConversion:
    """Lower ``onnx_path`` to TensorFlow, convert to a float32 .tflite at ``out_path`` (written atomically).

    ``input_shapes`` fixes dynamic input dimensions (ONNX layout), e.g. ``{"image": [1, 3, 224, 224]}``; a
    dynamic batch alone defaults to 1. The ONNX file is only read.
    """
    from converters.onnx_to_tf import lower_to_tf, prepare_model  # Imports TensorFlow: only when converting.

    start = time.perf_counter()
    fake_quant = None
    if quantization is not None:
        fake_quant = {name: (lo, hi, quantization.bits) for name, (lo, hi) in quantization.ranges.items()}
    lowered = lower_to_tf(prepare_model(Path(onnx_path), input_shapes), fake_quant)
    tflite_bytes = run_tflite_converter(lowered, Path(onnx_path), quantization)
    if quantization is not None and quantization.bits == 16:
        tflite_bytes = widen_16x8_biases(tflite_bytes)
    record = {"inputs": dump_specs(lowered.inputs), "outputs": dump_specs(lowered.outputs)}
    write_bytes_atomic(Path(out_path), with_io_metadata(tflite_bytes, record))
    seconds = time.perf_counter() - start
    counts = {"TRANSPOSE": 0, **count_tflite_ops(out_path)}
    # Read the interface back from the file: integer I/O changes dtypes and adds scales the lowering never saw.
    written = TFLiteSession(out_path)
    return TFLiteConversion(written.inputs, written.outputs, counts, seconds)


def run_tflite_converter(lowered, onnx_path: Path, quantization: FakeQuantization | None = None) -> bytes:
    import tensorflow as tf

    # Concrete functions (not Keras: Keras 3 models give NaN through this path) keep the signature keys.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([lowered.function], lowered.module)
    if quantization is not None:
        configure_integer_conversion(converter, quantization)
    try:
        return converter.convert()
    except Exception as e:
        raise StageError("convert", f"the TFLite converter failed on {str(onnx_path)!r}: {converter_error(e)}") from e


def converter_error(error: Exception) -> str:
    """The converter's 'error: ...' lines, without the pages of MLIR source locations around them."""
    lines = [line.split("error: ", 1)[1] for line in str(error).splitlines() if "error: " in line]
    return "; ".join(dict.fromkeys(lines)) or str(error).splitlines()[0]


def configure_integer_conversion(converter, quantization: FakeQuantization) -> None:
    """The fake-quant nodes carry every activation range, so no representative dataset is needed (or wanted: it
    would let the converter calibrate its own ranges)."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization.bits == 16:
        ops_16x8 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        converter.target_spec.supported_ops = [ops_16x8]
    if quantization.integer_io:
        io_type = tf.int16 if quantization.bits == 16 else tf.int8
        converter.inference_input_type = converter.inference_output_type = io_type


def dump_specs(specs: list[TensorSpec]) -> list[dict]:
    return [spec.model_dump(include={"name", "tensor_name", "layout", "perm_from_onnx"}) for spec in specs]
