"""Shared helpers for converter tests: build tiny ONNX graphs, convert them, compare LiteRT with onnxruntime."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Tools write caches under ~ on import; keep them in the venv (set before TF/Keras are imported).
_CACHE = Path(__file__).resolve().parents[2] / ".venv" / "cache"
os.environ.setdefault("KERAS_HOME", str(_CACHE / "keras"))
os.environ.setdefault("MPLCONFIGDIR", str(_CACHE / "mpl"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from edgepack.converters.onnx_to_tflite import TFLiteConversion, convert_onnx_to_tflite  # noqa: E402
from edgepack.converters.runtime import OnnxSession, TFLiteSession  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from edgepack.core.artifacts import from_runtime_layout, to_runtime_layout  # noqa: E402

# LiteRT float32 must match onnxruntime to within this fraction of each output's value range.
RELATIVE_TOLERANCE = 1e-4


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    outputs: list[str],
    constants: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    input_types: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """A model: ``inputs`` fed at run time (float32 unless ``input_types`` says otherwise), ``constants`` as
    initializers, output shapes inferred."""
    types = input_types or {}
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (constants or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 10
    return with_inferred_outputs(model)


def with_inferred_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Graph outputs need a shape to pass the checker; take it from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {info.name: info for info in [*inferred.value_info, *inferred.output]}
    for output in model.graph.output:
        if output.name in known and known[output.name].type.tensor_type.HasField("shape"):
            output.CopyFrom(known[output.name])
    return model


@dataclass
class Comparison:
    conversion: TFLiteConversion
    max_error: float
    tolerance: float
    reference: dict[str, np.ndarray]
    actual: dict[str, np.ndarray]  # LiteRT's outputs, back in the ONNX layout


def random_feeds(
    session: OnnxSession, seed: int = 0, positive: bool = False, shapes: dict[str, list[int]] | None = None
) -> dict[str, np.ndarray]:
    """Seeded inputs: normal floats (or positive ones), integers in {0, 1} for integer inputs (masks, ids)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.inputs:
        shape = (shapes or {}).get(spec.name) or [max(d, 1) for d in spec.shape]
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
            continue
        data = rng.standard_normal(shape).astype(np.float32)
        feeds[spec.name] = np.abs(data) + 0.1 if positive else data
    return feeds


def worst_error(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max abs error, tolerance) of the output worst off relative to RELATIVE_TOLERANCE x its value range."""
    worst = (0.0, 1.0)
    for name, reference in expected.items():
        reference = reference.astype(np.float64)  # Also bool and integer outputs.
        assert actual[name].shape == reference.shape, f"{name}: {actual[name].shape} != {reference.shape}"
        value_range = float(np.ptp(reference)) if reference.size > 1 else float(np.abs(reference).max())
        tolerance = RELATIVE_TOLERANCE * max(value_range, 1e-3)
        error = float(np.abs(actual[name].astype(np.float64) - reference).max())
        worst = max(worst, (error, tolerance), key=lambda pair: pair[0] / pair[1])
    return worst


def run_tflite(tflite_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LiteRT's outputs for ONNX-layout ``feeds``, returned in the ONNX layout."""
    tflite = TFLiteSession(tflite_path)
    results = tflite.run({spec.name: to_runtime_layout(feeds[spec.name], spec) for spec in tflite.inputs})
    return {spec.name: from_runtime_layout(results[spec.name], spec) for spec in tflite.outputs}


def convert_and_compare(
    onnx_path: Path, tflite_path: Path, positive: bool = False, input_shapes=None, feeds=None
) -> Comparison:
    """Convert, run both files on the same inputs (seeded random unless given), return the worst error."""
    conversion = convert_onnx_to_tflite(onnx_path, tflite_path, input_shapes=input_shapes)
    reference_session = OnnxSession(onnx_path)
    if feeds is None:
        feeds = random_feeds(reference_session, positive=positive, shapes=input_shapes)
    reference = reference_session.run(feeds)
    actual = run_tflite(tflite_path, feeds)
    error, tolerance = worst_error(reference, actual)
    return Comparison(conversion, error, tolerance, reference, actual)
