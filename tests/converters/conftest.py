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
from onnx import helper, numpy_helper  # noqa: E402

from converters.onnx_to_tflite import TFLiteConversion, convert_onnx_to_tflite  # noqa: E402
from converters.runtime import OnnxSession, TFLiteSession  # noqa: E402
from edgepack.artifacts import from_runtime_layout, to_runtime_layout  # noqa: E402

# LiteRT float32 must match onnxruntime to within this fraction of each output's value range.
RELATIVE_TOLERANCE = 1e-4


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    outputs: list[str],
    constants: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A float32 model: ``inputs`` fed at run time, ``constants`` as initializers, output shapes inferred."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs.items()],
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


def random_feeds(session: OnnxSession, seed: int = 0, positive: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.inputs:
        data = rng.standard_normal([max(d, 1) for d in spec.shape]).astype(np.float32)
        feeds[spec.name] = np.abs(data) + 0.1 if positive else data
    return feeds


def convert_and_compare(onnx_path: Path, tflite_path: Path, positive: bool = False, input_shapes=None) -> Comparison:
    """Convert, run both files on the same seeded inputs, and return the worst error against the tolerance."""
    conversion = convert_onnx_to_tflite(onnx_path, tflite_path, input_shapes=input_shapes)
    reference_session, tflite = OnnxSession(onnx_path), TFLiteSession(tflite_path)
    feeds = random_feeds(reference_session, positive=positive)
    reference = reference_session.run(feeds)
    tflite_feeds = {spec.name: to_runtime_layout(feeds[spec.name], spec) for spec in tflite.inputs}
    results = tflite.run(tflite_feeds)
    worst = (0.0, 1.0)
    for spec in tflite.outputs:
        expected, actual = reference[spec.name], from_runtime_layout(results[spec.name], spec)
        assert actual.shape == expected.shape, f"{spec.name}: {actual.shape} != {expected.shape}"
        value_range = float(np.ptp(expected)) if expected.size > 1 else float(np.abs(expected).max())
        tolerance = RELATIVE_TOLERANCE * max(value_range, 1e-3)
        error = float(np.abs(actual.astype(np.float64) - expected).max())
        worst = max(worst, (error, tolerance), key=lambda pair: pair[0] / pair[1])
    return Comparison(conversion, worst[0], worst[1], reference)
