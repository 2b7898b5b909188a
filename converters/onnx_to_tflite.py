"""ONNX -> TFLite (float32) through our own ONNX -> TensorFlow lowering.

We own the lowering (rather than onnx2tf or litert-torch) so the integer path can place fake-quant nodes with
edgepack's calibration ranges, giving the TFLite file the same scales as the ONNX QDQ file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgepack.converters.runtime import TFLiteSession, count_tflite_ops
from edgepack.converters.tflite_metadata import with_io_metadata
from edgepack.converters.tflite_patch import patch_16x8
from edgepack.converters.tflite_per_tensor import per_tensor_weights, snap_weights_to_tensor_grid

from edgepack.core.artifacts import Artifact, Format, TensorSpec, sha256_file, write_bytes_atomic
from edgepack.core.errors import StageError
from edgepack.core.kernels import NO_INT16_TFLITE_KERNEL


@dataclass
class FakeQuantization:
    """Integer conversion from edgepack's own ranges: tensor name -> (min, max) of its integer grid.

    The ranges must be the representable ranges of edgepack's parameters (``QuantParams.representable_range``),
    from which TensorFlow recomputes exactly edgepack's scale and zero point. Weights are left to the converter,
    whose per-channel (or, asked, per-tensor) symmetric int8 (max|w| / 127) is edgepack's own rule for weights.
    """

    ranges: dict[str, tuple[float, float]]
    bits: int = 8  # 8: full int8; 16: 16-bit activations with int8 weights (16x8)
    integer_io: bool = False  # int8/int16 model inputs and outputs instead of float ones
    per_channel_weights: bool = True  # False: one scale per weight tensor, as calibration.params.weight_params(w, None)
    # Weights and biases already on edgepack's integer grids (converters.qdq.dequantized_constants), by initializer
    # name: the converter rounds them back to exactly the QDQ file's integers. Left out, it rounds the float values
    # its own way, and a few weights (ties) and biases end one integer apart from the QDQ file's.
    constants: dict[str, np.ndarray] | None = None


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
    from edgepack.converters.onnx_to_tf import lower_to_tf, prepare_model  # Imports TensorFlow: only when converting.

    sixteen_bit = quantization is not None and quantization.bits == 16
    if sixteen_bit:
        check_16x8_kernels(Path(onnx_path))
    start = time.perf_counter()
    fake_quant = None
    if quantization is not None:
        fake_quant = {name: (lo, hi, quantization.bits) for name, (lo, hi) in quantization.ranges.items()}
    prepared = prepare_model(Path(onnx_path), input_shapes, fuse=not sixteen_bit)
    if quantization is not None and quantization.constants:
        prepared.constants.update({k: v for k, v in quantization.constants.items() if k in prepared.constants})
    per_tensor = quantization is not None and not quantization.per_channel_weights
    if per_tensor:
        snap_weights_to_tensor_grid(prepared.graph, prepared.constants)
    lowered = lower_to_tf(prepared, fake_quant)
    tflite_bytes = run_tflite_converter(lowered, Path(onnx_path), quantization)
    if per_tensor:
        tflite_bytes = per_tensor_weights(tflite_bytes)
    if sixteen_bit:
        tflite_bytes = patch_16x8(tflite_bytes)
    record = {"inputs": dump_specs(lowered.inputs), "outputs": dump_specs(lowered.outputs)}
    write_bytes_atomic(Path(out_path), with_io_metadata(tflite_bytes, record))
    seconds = time.perf_counter() - start
    written = prepared_or_removed(Path(out_path), Path(onnx_path))
    counts = {"TRANSPOSE": 0, **count_tflite_ops(out_path)}
    return TFLiteConversion(written.inputs, written.outputs, counts, seconds)


def prepared_or_removed(out_path: Path, onnx_path: Path) -> TFLiteSession:
    """The written file, opened in LiteRT (which prepares every op); a file LiteRT cannot prepare is removed, so no
    artifact exists that fails on the device. Read back: integer I/O changes dtypes and adds scales."""
    try:
        return TFLiteSession(out_path)
    except Exception as e:
        out_path.unlink(missing_ok=True)
        raise StageError("convert", f"LiteRT cannot prepare the TFLite file converted from {str(onnx_path)!r}, so "
                         f"it was removed: {str(e).strip()}; convert that op's precision differently (e.g. int8, "
                         "or formats: [onnx]), or report the op") from e  # fmt: skip


def check_16x8_kernels(model_path: Path) -> None:
    """Refuse, naming the first node, an ONNX model whose ops have no 16-bit TFLite kernel (before any work)."""
    import onnx

    from edgepack.core.errors import UnsupportedOperatorError

    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        if node.op_type in NO_INT16_TFLITE_KERNEL:
            module = torch_module_of(node)
            detail = (
                (f"it is the torch module {module}; " if module else "")
                + f"TFLite's {NO_INT16_TFLITE_KERNEL[node.op_type]} has no 16-bit kernel, so a 16x8 TFLite file "
                "cannot hold it; quantize TFLite to int8, or write int16x8 for ONNX only (formats: [onnx])"
            )
            raise UnsupportedOperatorError(node.op_type, node.name, detail)


def torch_module_of(node) -> str | None:
    """The torch module an exported node came from, as "'features.0.2' (Hardswish)", from the metadata torch's
    dynamo exporter writes (the node's own name is often a bare 'n0'); None when the file has none."""
    import ast

    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))  # ['', 'features', ..., 'op']
        classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))  # [..., 'x.Hardswish', 'aten.op']
    except (ValueError, SyntaxError):
        return None
    modules = [scope for scope in scopes[1:-1] if scope]
    if not modules:
        return None
    kind = f" ({classes[-2].rsplit('.', 1)[-1]})" if len(classes) >= 2 else ""
    return f"{modules[-1]!r}{kind}"


def run_tflite_converter(lowered, onnx_path: Path, quantization: FakeQuantization | None = None) -> bytes:
    import tensorflow as tf

    # Concrete functions (not Keras: Keras 3 models give NaN through this path) keep the signature keys.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([lowered.function], lowered.module)
    if quantization is not None:
        configure_integer_conversion(converter, quantization)
    try:
        return converter.convert()
    except Exception as e:
        # An integer file is the quantize stage's; what it converted is the float ONNX file with its ranges.
        what = "" if quantization is None else f" (int{quantization.bits} activations)"
        stage = "convert" if quantization is None else "quantize"
        cause = f"the TFLite converter failed on {str(onnx_path)!r}{what}: {converter_error(e)}"
        raise StageError(stage, cause) from e


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


def foreign_activation_grids(tflite_path: Path, grids: set[tuple[float, int]]) -> list[str]:
    """The TFLite tensors whose per-tensor integer grid (scale, zero point) is not one of ``grids``: any such
    tensor's range was chosen by the converter, not by edgepack."""
    import numpy as np
    from edgepack.converters.runtime import load_tflite_interpreter

    interpreter, _, _ = load_tflite_interpreter(tflite_path, default_delegates=False)
    # _get_ops_details is private, but it is the interpreter's only way to say which tensors ops write.
    written = {int(i) for op in interpreter._get_ops_details() for i in op["outputs"]}
    written |= {d["index"] for d in interpreter.get_input_details()}
    foreign = []
    for detail in interpreter.get_tensor_details():
        scales, zero_points = (detail["quantization_parameters"][k] for k in ("scales", "zero_points"))
        if detail["index"] not in written or detail["dtype"] not in (np.int8, np.int16) or len(scales) != 1:
            continue  # weights and biases (constants: no op writes them) and float tensors
        if not any(np.isclose(scales[0], s, rtol=1e-6, atol=0) and zero_points[0] == z for s, z in grids):
            foreign.append(detail["name"])
    return foreign


def tflite_artifact(run_dir: Path, out: Path, conversion: TFLiteConversion, *, name: str, precision, parent: str,
                    stage: str, **details) -> Artifact:  # fmt: skip
    """The artifact record of a .tflite written by edgepack's converter (float or integer)."""
    from edgepack.converters.tflite_metadata import read_min_runtime_version

    return Artifact(
        name=name, format=Format.TFLITE, precision=precision, path=str(out.relative_to(run_dir)),
        sha256=sha256_file(out), bytes=out.stat().st_size, parent=parent, stage=stage,
        inputs=conversion.inputs, outputs=conversion.outputs, op_counts=conversion.op_counts,
        details={"conversion_seconds": round(conversion.seconds, 3), "transposes": conversion.op_counts["TRANSPOSE"],
                 "min_runtime_version": read_min_runtime_version(out.read_bytes()), **details},
    )  # fmt: skip
