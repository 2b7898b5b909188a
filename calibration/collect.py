"""Run the float ONNX model over calibration samples and feed each planned tensor to its range estimator.

One pass of inference in onnxruntime with the planned tensors exposed as extra outputs; only the estimators'
statistics are kept, never the activations, so memory stays flat as the sample count grows.

Exported models usually fix their batch at 1, and one call per sample pays onnxruntime's per-call and per-output
costs and numpy's per-tensor costs once per sample. So ``read_tensors`` runs a copy whose batch dimension is free,
several samples a call (as many as fit ``BATCH_BYTES`` of exposed values), once a probe shows that copy computes,
sample for sample, what it computes one sample at a time; a graph with the batch baked in (a Reshape to [1, -1]) or
a tensor whose first axis is not the batch fails the probe and runs one sample a call.

What that costs (MobileNetV2 at 96x96, 1024 samples, benchmarks/calibration_cost.py, against plain inference one
sample a call): reading the 64 planned tensors alone is 1.4-1.6x, min-max calibration 1.8-2.0x (2.1-2.3x one sample
a call). The floor is the exposure: onnxruntime runs convolutions in a blocked layout (NCHWc) and must convert every
exposed tensor back to NCHW, and a Conv whose output is exposed can no longer absorb the residual Add after it.
Reducing min/max inside the graph instead (ReduceMin/ReduceMax outputs) was tried: cheaper with one thread, slower
with the default two, so the tensors are read in numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from edgepack.calibration.estimators import RangeEstimator

from edgepack.core.dataset import ArrayDataset, in_model_shape, real_rows
from edgepack.core.errors import DataError

MIN_CALIBRATION_SAMPLES = 8
BATCH_BYTES = 24 << 20  # tensor values fetched per call at the most: memory stays bounded, whatever the sample count
MAX_BATCH = 32  # past this, a bigger call saves nothing measurable
PROBE_SAMPLES = 3
PROBE_TOLERANCE = 1e-4  # of each tensor's largest magnitude: kernels may sum in another order for another batch

TensorReader = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class TensorBatch:
    values: dict[str, np.ndarray]  # every requested tensor, graph inputs included
    rows: int  # samples the model ran: a fixed-batch model's padding (copies of the last sample) included
    samples: int  # of which real: in batch-first values, the first ``samples`` rows

    def real(self, name: str) -> np.ndarray:
        return real_rows(self.values[name], self.samples, self.rows)


def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy whose graph also outputs ``tensors`` (a graph input cannot be an output: those are read directly)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output} | {i.name for i in augmented.graph.input}
    for name in tensors:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return augmented


def onnx_tensor_reader(model: onnx.ModelProto, tensors: list[str]) -> TensorReader:
    """A function batch -> {tensor: value} running ``model`` in onnxruntime with ``tensors`` exposed as outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # A failing run raises with its message; onnxruntime's own log line of it would only repeat it on stderr (and a
    # batch probe that fails on purpose, falling back to one sample a call, is no error at all).
    options.log_severity_level = 4
    session = ort.InferenceSession(with_outputs(model, tensors).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    inputs = {i.name for i in session.get_inputs()}
    fetched = [t for t in tensors if t not in inputs]

    def read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # onnxruntime reads an empty list of names as "every output": with only graph inputs asked, run nothing
        values = dict(zip(fetched, session.run(fetched, ort_feeds(session, batch)), strict=True)) if fetched else {}
        return values | {t: batch[t] for t in tensors if t in inputs}

    return read


def ort_feeds(session, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch as ``session`` takes it: a sample of an input batched on another axis (a [2, 1, 128] state) or not at
    all (a scalar) in the input's own static shape."""
    fixed = {i.name: i.shape for i in session.get_inputs() if all(isinstance(d, int) for d in i.shape)}
    return {name: in_model_shape(array, fixed[name]) if name in fixed else array for name, array in batch.items()}


def read_tensors(model: onnx.ModelProto, tensors: list[str], dataset: ArrayDataset) -> Iterator[TensorBatch]:
    """``tensors``' values over every sample of ``dataset``, many samples a call where the model allows it."""
    batch = model_batch(model)
    if batch is not None and batch > 1:
        yield from _padded(onnx_tensor_reader(model, tensors), dataset, batch)
        return
    free = free_batch_copy(model) if batch == 1 else model
    read, probe = _probe(free, tensors, dataset)
    if probe is None:  # the batch cannot be freed
        yield from _padded(onnx_tensor_reader(model, tensors), dataset, 1)
        return
    yield probe
    size = _batch_within_budget(probe)
    for start in range(probe.rows, len(dataset), size):
        part = {name: array[start : start + size] for name, array in dataset.inputs.items()}
        count = len(next(iter(part.values())))
        yield TensorBatch(read(part), count, count)


def model_outputs(model: onnx.ModelProto, dataset: ArrayDataset) -> dict[str, np.ndarray]:
    """The graph outputs over every sample of ``dataset``, stacked (batch-first outputs)."""
    names = [o.name for o in model.graph.output]
    batches = list(read_tensors(model, names, dataset))
    return {name: np.concatenate([b.real(name) for b in batches]) for name in names}


def model_batch(model: onnx.ModelProto) -> int | None:
    """The first input's fixed batch size; None when it is free (a named or unknown dimension)."""
    initializers = {t.name for t in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in initializers)
    dims = first.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def free_batch_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs and outputs declare a free first dimension; intermediate shapes are dropped, so
    onnxruntime infers them again."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {t.name for t in copy.graph.initializer}
    for value in [*copy.graph.input, *copy.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims:
            dims[0].dim_param = "batch"
    del copy.graph.value_info[:]
    return copy


def _probe(model: onnx.ModelProto, tensors: list[str], dataset: ArrayDataset) -> tuple[TensorReader | None,
                                                                                       TensorBatch | None]:  # fmt: skip
    """The first samples run together and one at a time: the batched values, if every tensor agrees row by row."""
    count = min(PROBE_SAMPLES, len(dataset))
    first = {name: array[:count] for name, array in dataset.inputs.items()}
    try:
        read = onnx_tensor_reader(model, tensors)
        together = read(first)
        alone = [read({name: array[i : i + 1] for name, array in first.items()}) for i in range(count)]
    except Exception:  # noqa: BLE001  onnxruntime refuses the batch in many ways; each means "keep it fixed"
        return None, None
    if all(_same_rows(together[t], [a[t] for a in alone]) for t in tensors):
        return read, TensorBatch(together, count, count)
    return None, None


def _same_rows(together: np.ndarray, alone: list[np.ndarray]) -> bool:
    if together.shape != (len(alone), *alone[0].shape[1:]) or any(a.shape[0] != 1 for a in alone):
        return False
    reference = np.concatenate(alone)
    tolerance = PROBE_TOLERANCE * float(np.max(np.abs(reference), initial=0.0))
    return bool(np.allclose(together, reference, rtol=0.0, atol=tolerance))


def _batch_within_budget(probe: TensorBatch) -> int:
    per_sample = sum(v.nbytes for v in probe.values.values()) / probe.rows
    return int(np.clip(BATCH_BYTES // max(per_sample, 1), 1, MAX_BATCH))


def padded_batches(dataset: ArrayDataset, batch: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(batch padded to a fixed-batch model's size by repeating the last sample, how many of its samples are real)."""
    from edgepack.converters.verify import pad_batch

    for part in dataset.batches(batch):
        yield pad_batch(part, batch), len(next(iter(part.values())))


def _padded(read: TensorReader, dataset: ArrayDataset, batch: int) -> Iterator[TensorBatch]:
    for part, count in padded_batches(dataset, batch):
        yield TensorBatch(read(part), batch, count)


def collect_ranges(model: onnx.ModelProto, tensors: list[str], dataset: ArrayDataset,
                   make_estimator: Callable[[str], RangeEstimator]) -> dict[str, tuple[float, float]]:  # fmt: skip
    return {t: e.range() for t, e in collect_estimators(model, tensors, dataset, make_estimator).items()}


def collect_estimators(model: onnx.ModelProto, tensors: list[str], dataset: ArrayDataset,
                       make_estimator: Callable[[str], RangeEstimator]) -> dict[str, RangeEstimator]:  # fmt: skip
    """Each tensor's estimator after observing every sample (method auto reads several ranges from each)."""
    estimators = {t: make_estimator(t) for t in tensors}
    for batch in read_tensors(model, tensors, dataset):
        for name, value in batch.values.items():
            estimators[name].observe(value, batch.rows)
    return estimators


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
