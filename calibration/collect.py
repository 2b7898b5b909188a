"""Run the float ONNX model over calibration batches and feed each planned tensor to its range estimator.

One pass of inference in onnxruntime with the planned tensors exposed as extra outputs; only the estimators'
statistics are kept, never the activations, so memory stays flat as the sample count grows.

What that costs (MobileNetV2 at 96x96, benchmarks/calibration_cost.py): exposing the 64 planned tensors alone makes
inference about 1.35-1.5x slower. onnxruntime runs convolutions in a blocked layout (NCHWc) and must convert every
exposed tensor back to NCHW (64 ReorderOutput nodes instead of 1), and a Conv whose output is exposed can no longer
absorb the residual Add after it. That is the floor for any calibration that reads the tensors. Reducing min/max
inside the graph instead (ReduceMin/ReduceMax outputs) was tried: cheaper with one thread, slower with the default
two, so the tensors are read in numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx

from calibration.estimators import RangeEstimator
from calibration.sources import ArrayDataset
from edgepack.errors import DataError

MIN_CALIBRATION_SAMPLES = 8


def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy whose graph also outputs ``tensors`` (a graph input cannot be an output: those are read directly)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output} | {i.name for i in augmented.graph.input}
    for name in tensors:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return augmented


def collect_ranges(model: onnx.ModelProto, tensors: list[str], batches: Iterable[dict[str, np.ndarray]],
                   make_estimator: Callable[[str], RangeEstimator]) -> dict[str, tuple[float, float]]:  # fmt: skip
    import onnxruntime as ort

    session = ort.InferenceSession(with_outputs(model, tensors).SerializeToString(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    inputs = {i.name for i in session.get_inputs()}
    fetched = [t for t in tensors if t not in inputs]
    estimators = {t: make_estimator(t) for t in tensors}
    for batch in batches:
        for name, value in zip(fetched, session.run(fetched, batch), strict=True):
            estimators[name].observe(value)
        for name in inputs & set(tensors):
            estimators[name].observe(batch[name])
    return {t: e.range() for t, e in estimators.items()}


def check_calibration_data(dataset: ArrayDataset | None, source: str) -> ArrayDataset:
    """Enough finite samples for every input; the shapes were checked when the data was loaded."""
    if dataset is None:
        raise DataError("quantization needs calibration data: set 'data' in the recipe (or --calib DATA.npz)")
    if len(dataset) < MIN_CALIBRATION_SAMPLES:
        raise DataError(f"{source}: {len(dataset)} calibration samples found; at least {MIN_CALIBRATION_SAMPLES} "
                        "are needed for ranges that generalise (a few hundred is typical)")  # fmt: skip
    for name, array in dataset.inputs.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise DataError(f"{source}: calibration input {name!r} contains NaN or Inf values")
    return dataset
