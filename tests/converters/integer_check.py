"""Quantize an exported model once, write the ONNX QDQ file and the TFLite file from that one calibration (as the
quantize stage does), and measure each integer file against the float model in its own runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from edgepack.calibration.ptq import Calibration, QuantScheme, calibrate
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
from edgepack.converters.qdq import write_qdq_model
from edgepack.converters.runtime import OnnxSession, TFLiteSession

from edgepack.core.artifacts import from_runtime_layout, to_runtime_layout
from edgepack.core.dataset import ArrayDataset


@dataclass
class IntegerFiles:
    onnx_path: Path
    tflite_path: Path
    calibration: Calibration


def quantize_both(float_onnx: Path, calibration_data: ArrayDataset, precision: str = "int8",
                  scheme: QuantScheme | None = None) -> IntegerFiles:  # fmt: skip
    """``float_onnx`` -> ``.{precision}.onnx`` (QDQ) and ``.{precision}.tflite`` beside it, one calibration.
    ``scheme`` (default: min-max ranges at ``precision``): with ``bias_correction``, both files get the corrected
    biases."""
    model = onnx.load(str(float_onnx))
    scheme = scheme or QuantScheme(precision=precision, method="minmax")  # the lowering's parity, not the ranges
    calibration = calibrate(model, calibration_data, scheme)
    onnx_path = float_onnx.with_suffix(f".{precision}.onnx")
    tflite_path = float_onnx.with_suffix(f".{precision}.tflite")
    if scheme.bias_correction:
        from edgepack.calibration.bias_correction import correct_biases, with_corrected_model

        model = correct_biases(model, calibration.plan, calibration_data.head(scheme.samples), 1).model
        calibration = with_corrected_model(calibration, model)
        float_onnx = float_onnx.with_suffix(".corrected.onnx")
        onnx.save(model, str(float_onnx))
    write_qdq_model(model, onnx_path, calibration.plan, calibration.activations, constants=calibration.constants)
    shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    bits = 16 if precision == "int16x8" else 8
    convert_onnx_to_tflite(float_onnx, tflite_path, shapes, FakeQuantization(calibration.fake_quant_ranges(), bits))
    return IntegerFiles(onnx_path, tflite_path, calibration)


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs, one sample a call (exported files fix batch 1)."""
    session = OnnxSession(path)
    return _stacked([session.run(_one(feeds, i)) for i in range(_count(feeds))])


def run_tflite_each(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LiteRT's outputs in the ONNX layout, one sample a call."""
    session = TFLiteSession(path)

    def run(one: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = session.run({spec.name: to_runtime_layout(one[spec.name], spec) for spec in session.inputs})
        return {spec.name: from_runtime_layout(results[spec.name], spec) for spec in session.outputs}

    return _stacked([run(_one(feeds, i)) for i in range(_count(feeds))])


def cosine(reference: np.ndarray, actual: np.ndarray) -> float:
    a, b = reference.astype(np.float64).ravel(), actual.astype(np.float64).ravel()
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Signal to quantization-noise ratio of ``actual`` against ``reference``."""
    noise = np.mean((reference.astype(np.float64) - actual) ** 2)
    return float(10 * np.log10(np.mean(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


def _one(feeds: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    return {name: array[index : index + 1] for name, array in feeds.items()}


def _count(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def _stacked(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}
