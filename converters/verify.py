"""Run an artifact in its own runtime and compare its outputs with the reference.

Each runtime is fed in its own layout (TFLite NHWC, ONNX NCHW); outputs are brought back to the ONNX layout
before comparing, so the comparison is element for element.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepack.core.artifacts import TensorSpec, from_runtime_layout, to_runtime_layout
from edgepack.core.dataset import ArrayDataset, in_model_shape, real_rows


class IntegerTolerance(BaseModel):
    """What quantization can explain: an integer file further from its float reference than this is broken (a
    wrong weight order, a kernel given the wrong grid), not merely rounded. The defaults hold with margin for
    per-channel int8 of trained nets (cosine 0.999+ on the digits CNNs, MobileNet-class 0.98-0.995)."""

    model_config = ConfigDict(extra="forbid")
    min_cosine: float = Field(0.99, ge=-1, le=1, description="Each output's cosine similarity to the reference.")
    min_top1_agreement: float = Field(
        0.9, ge=0, le=1, description="Classification: the fraction of samples whose top-1 class is the reference's."
    )


class OutputComparison(BaseModel):
    output: str
    max_abs_error: float
    mean_abs_error: float
    cosine_similarity: float
    sqnr_db: float | None = None  # signal-to-error power ratio against the reference; None: no error at all
    reference_range: float
    tolerance: float | None  # float files: allowed max abs error; None for integer files (min_cosine instead)
    min_cosine: float | None = None  # integer files: the floor on cosine_similarity
    passed: bool

    def describe_failure(self) -> str:
        if self.tolerance is not None and self.max_abs_error > self.tolerance:
            return f"max abs error {self.max_abs_error:.3g} > {self.tolerance:.3g}"
        return f"cosine {self.cosine_similarity:.5f} < {self.min_cosine}"


class Verification(BaseModel):
    samples: int
    runtime: str
    runtime_version: str
    outputs: list[OutputComparison]
    top1_agreement: float | None = None
    min_top1_agreement: float | None = None  # integer files of a classifier: the floor on top1_agreement
    passed: bool

    def failures(self) -> list[str]:
        """Each figure outside its tolerance, as 'what measured vs allowed' (empty when passed)."""
        found = [f"output {c.output!r}: {c.describe_failure()}" for c in self.outputs if not c.passed]
        floor = self.min_top1_agreement
        if floor is not None and self.top1_agreement is not None and self.top1_agreement < floor:
            found.append(f"top-1 agreement {self.top1_agreement:.3f} < {floor}")
        return found


def predict(session, dataset: ArrayDataset, batch_size: int) -> dict[str, np.ndarray]:
    """Outputs (ONNX layout, stacked over samples) of ``session`` on every sample, in batches of the model's size."""
    results: dict[str, list[np.ndarray]] = {spec.name: [] for spec in session.outputs}
    for batch in dataset.batches(batch_size):
        count = len(next(iter(batch.values())))
        outputs = session.run(_runtime_feeds(session.inputs, pad_batch(batch, batch_size)))
        for spec in session.outputs:
            results[spec.name].append(real_rows(from_runtime(outputs[spec.name], spec), count, batch_size))
    return {name: np.concatenate(parts) for name, parts in results.items()}


def runtime_samples(session, dataset: ArrayDataset, batch_size: int) -> tuple[dict[str, np.ndarray], list[int]]:
    """Every batch of ``dataset`` as ``session``'s runtime takes it (its layout, quantized for an integer input, a
    short last batch padded as ``predict`` pads it), stacked on a new first axis and keyed as the runtime names its
    inputs; and how many real samples each batch holds. What device_bench.run_on_target runs on a device."""
    feeds, counts = [], []
    for batch in dataset.batches(batch_size):
        counts.append(len(next(iter(batch.values()))))
        feeds.append(_runtime_feeds(session.inputs, pad_batch(batch, batch_size)))
    return {runtime_key(spec): np.stack([feed[spec.name] for feed in feeds]) for spec in session.inputs}, counts


def outputs_from_runtime(session, outputs: dict[str, np.ndarray], counts: list[int]) -> dict[str, np.ndarray]:
    """What the runtime gave for ``runtime_samples``' batches -> what ``predict`` gives for the same samples:
    real values in the ONNX layout keyed by output name, stacked over samples, the padding dropped."""
    result = {}
    for spec in session.outputs:
        batches = outputs[runtime_key(spec)]
        result[spec.name] = np.concatenate([from_runtime(batches[i], spec)[:n] for i, n in enumerate(counts)])
    return result


def runtime_key(spec: TensorSpec) -> str:
    """The key a runtime feeds or fetches a tensor by: a .tflite's signature key (or tensor name), an ONNX name."""
    return spec.tensor_name or spec.name


def _runtime_feeds(specs: list[TensorSpec], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {spec.name: to_runtime(batch[spec.name], spec) for spec in specs}


def to_runtime(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Real-valued data (ONNX layout) -> what the runtime takes: its layout, and quantized for an integer input."""
    array = to_runtime_layout(in_model_shape(array, onnx_shape(spec)), spec)
    if _quantized_io(spec) and np.issubdtype(array.dtype, np.floating):
        q, info = spec.quantization, np.iinfo(spec.dtype)
        return np.clip(np.round(array / q.scale[0]) + q.zero_point[0], info.min, info.max).astype(spec.dtype)
    return array.astype(spec.dtype, copy=False)


def onnx_shape(spec: TensorSpec) -> list[int]:
    return list(spec.shape) if spec.perm_from_onnx is None else [spec.shape[i] for i in np.argsort(spec.perm_from_onnx)]


def from_runtime(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """What the runtime gave -> real values in the ONNX layout (an integer output is dequantized)."""
    if _quantized_io(spec):
        q = spec.quantization
        array = ((array.astype(np.float32) - q.zero_point[0]) * q.scale[0]).astype(np.float32)
    return from_runtime_layout(array, spec)


def _quantized_io(spec: TensorSpec) -> bool:
    return spec.quantization is not None and np.issubdtype(np.dtype(spec.dtype), np.integer)


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Repeat the last sample so a short final batch fits a model exported with a fixed batch size."""
    padded = {}
    for name, array in batch.items():
        missing = batch_size - len(array)
        padded[name] = np.concatenate([array, np.repeat(array[-1:], missing, axis=0)]) if missing > 0 else array
    return padded


def compare(
    reference: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    *,
    relative_tolerance: float | None,
    integer: IntegerTolerance | None = None,
    classifier: bool,
) -> tuple[list[OutputComparison], float | None]:
    """Per-output error figures, judged by ``relative_tolerance`` x the reference output's range (float files) or
    by ``integer``'s cosine floor (integer files); neither: measured only."""
    min_cosine = integer.min_cosine if integer else None
    comparisons = [
        _compare_one(name, ref, actual[name], relative_tolerance, min_cosine) for name, ref in reference.items()
    ]
    first = next(iter(reference))
    top1 = _top1_agreement(reference[first], actual[first]) if classifier else None
    return comparisons, top1


def _compare_one(
    name: str, ref: np.ndarray, out: np.ndarray, relative_tolerance: float | None, min_cosine: float | None
) -> OutputComparison:
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    error = np.abs(ref64 - out64)
    value_range = float(ref64.max() - ref64.min()) if ref64.size else 0.0
    # A floor keeps a constant output (range 0) from demanding bit-exactness.
    tolerance = None if relative_tolerance is None else relative_tolerance * max(value_range, 1e-3)
    max_error = float(error.max()) if error.size else 0.0
    cosine = _cosine(ref64.ravel(), out64.ravel())
    within = (tolerance is None or max_error <= tolerance) and (min_cosine is None or cosine >= min_cosine)
    return OutputComparison(
        output=name,
        max_abs_error=max_error,
        mean_abs_error=float(error.mean()) if error.size else 0.0,
        cosine_similarity=cosine,
        sqnr_db=_sqnr_db(ref64, error),
        reference_range=value_range,
        tolerance=tolerance,
        min_cosine=min_cosine,
        passed=within,
    )


def _sqnr_db(ref64: np.ndarray, error: np.ndarray) -> float | None:
    noise = float(np.mean(error**2)) if error.size else 0.0
    if noise == 0:
        return None  # identical outputs: no finite figure (JSON has no infinity)
    return float(10 * np.log10(max(float(np.mean(ref64**2)), 1e-30) / noise))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """In [-1, 1]: identical outputs can round to 1.0000000000000002, which a report must not print."""
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if norms == 0 else float(np.clip(np.dot(a, b) / norms, -1.0, 1.0))


def _top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean(ref.reshape(len(ref), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)))


def verify_session(
    session,
    dataset: ArrayDataset,
    reference: dict[str, np.ndarray],
    *,
    batch_size: int,
    relative_tolerance: float | None,
    integer: IntegerTolerance | None = None,
    classifier: bool,
) -> Verification:
    """``relative_tolerance`` for float files, ``integer`` for integer ones (cosine and top-1 agreement floors)."""
    actual = predict(session, dataset, batch_size)
    return judge(reference, actual, (session.runtime, session.version), relative_tolerance, integer, classifier)


def judge(
    reference: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    runtime: tuple[str, str],
    relative_tolerance: float | None,
    integer: IntegerTolerance | None,
    classifier: bool,
) -> Verification:
    """``actual`` (outputs of ``runtime`` = (name, version), wherever they were computed) held to the tolerances."""
    comparisons, top1 = compare(
        reference, actual, relative_tolerance=relative_tolerance, integer=integer, classifier=classifier
    )
    min_top1 = integer.min_top1_agreement if integer and top1 is not None else None
    return Verification(
        samples=len(next(iter(actual.values()))),
        runtime=runtime[0],
        runtime_version=runtime[1],
        outputs=comparisons,
        top1_agreement=top1,
        min_top1_agreement=min_top1,
        passed=all(c.passed for c in comparisons) and (min_top1 is None or top1 >= min_top1),
    )
