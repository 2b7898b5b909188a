"""`edgepack inspect`: what a model file takes and gives, and which ops it is made of."""

from __future__ import annotations

from pathlib import Path

from edgepack.core.errors import ModelFileError


def describe_model(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    describe = {".onnx": _describe_onnx, ".tflite": _describe_tflite}.get(path.suffix.lower())
    if describe is None:
        raise ModelFileError(f"cannot inspect {path}: accepted suffixes are .onnx and .tflite")
    return {"path": str(path), "bytes": path.stat().st_size, **describe(path)}


def _describe_onnx(path: Path) -> dict:
    from edgepack.converters.onnx_info import load_onnx, onnx_op_counts, tensor_specs

    model = load_onnx(path)
    initializers = {t.name for t in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "format": "onnx",
        "opset": opset,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": _dump(tensor_specs(model.graph.input, initializers)),
        "outputs": _dump(tensor_specs(model.graph.output)),
        "op_counts": onnx_op_counts(model),
    }


def _describe_tflite(path: Path) -> dict:
    """From the flatbuffer alone: a file using custom ops the installed runtime lacks is still described."""
    from edgepack.converters.runtime import describe_tflite

    description = describe_tflite(path)
    return {
        "format": "tflite",
        "precision": description.precision,
        "inputs": _dump(description.inputs),
        "outputs": _dump(description.outputs),
        "op_counts": description.op_counts,
        "custom_ops": description.custom_ops,
    }


def _dump(specs) -> list[dict]:
    return [s.model_dump(exclude_none=True) for s in specs]
