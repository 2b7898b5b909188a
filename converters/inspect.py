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
    from edgepack.converters.runtime import TFLiteSession, count_tflite_ops

    session = TFLiteSession(path)
    return {
        "format": "tflite",
        "runtime": f"{session.runtime} {session.version}",
        "inputs": _dump(session.inputs),
        "outputs": _dump(session.outputs),
        "op_counts": dict(sorted(count_tflite_ops(path).items())),
    }


def _dump(specs) -> list[dict]:
    return [s.model_dump(exclude_none=True) for s in specs]
