"""``method: auto``: each activation tensor gets the range of whichever method quantizes it best on calibration
samples held out from fitting the ranges (calibration/held_out.py), never on the evaluation data.

Candidates: minmax, percentile, mse and entropy, all read from ONE sampled histogram per tensor (exact extremes), so
fitting them costs about what one histogram method costs. Entropy is computed there with the zeros counted (its own
estimator leaves them out); it is a candidate like the others and wins only where it scores best.

The score is the squared error of the tensor quantized on each candidate's grid against its float values, summed
over the held-out samples (a strided subsample of at most ``SCORED_VALUES`` values per tensor and call): one extra
pass of the float model over the held-out samples. That is per tensor, not end to end: a greedy search measuring
the model's output for every tensor and candidate would cost one pass per tensor and candidate (some 200 on a
MobileNet). What the per-tensor score adds over the mse method alone is that it is measured on samples the range
never saw: a range clipped to the calibration samples' tail, or left wide by one calibration outlier, loses there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from edgepack.calibration.attention_masks import FLAG_LIMIT, FlagAwareEstimator, SoftmaxInputEstimator
from edgepack.calibration.collect import read_tensors
from edgepack.calibration.estimators import EntropyEstimator, Method, MSEEstimator, PercentileEstimator
from edgepack.calibration.histogram import DEFAULT_SAMPLE_LIMIT, StreamingHistogram

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import activation_params

CANDIDATES = (Method.MINMAX, Method.PERCENTILE, Method.MSE, Method.ENTROPY)  # ties go to the first
SCORED_VALUES = 1 << 16


class CandidateEstimator:
    """Every candidate method's range from one sampled histogram; ``range()`` is min-max until a choice is made."""

    def __init__(self, levels: int = 256, symmetric: bool = False, percentile: float = 99.99):
        self.histogram = StreamingHistogram(sample_limit=DEFAULT_SAMPLE_LIMIT)
        self.clippers = {Method.PERCENTILE: PercentileEstimator(percentile, symmetric),
                         Method.MSE: MSEEstimator(levels, symmetric),
                         Method.ENTROPY: EntropyEstimator(levels, symmetric)}  # fmt: skip
        for clipper in self.clippers.values():
            clipper.histogram = self.histogram  # observed once, read by each

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        self.histogram.observe(values, samples)

    def candidates(self) -> dict[str, tuple[float, float]]:
        minmax = self.histogram.observed_range()
        return {Method.MINMAX: minmax} | {m: clipper.range() for m, clipper in self.clippers.items()}

    def range(self) -> tuple[float, float]:
        return self.candidates()[Method.MINMAX]


def candidate_ranges(estimator) -> tuple[dict[str, tuple[float, float]], float | None]:
    """(method -> range, the floor below which values need no grid: a Softmax input's) through the attention-mask
    wrappers; a tensor holding flags has only its extremes (it stays float)."""
    if isinstance(estimator, FlagAwareEstimator):
        return ({Method.MINMAX: estimator.range()}, None) if estimator.flagged else candidate_ranges(estimator.inner)
    if isinstance(estimator, SoftmaxInputEstimator):
        inner, _ = candidate_ranges(estimator.inner)
        floor = estimator.floor if np.isfinite(estimator.floor) else None
        return {m: (lo if floor is None else max(lo, floor), hi) for m, (lo, hi) in inner.items()}, floor
    return estimator.candidates(), None


@dataclass
class RangeChoice:
    ranges: dict[str, tuple[float, float]]  # the chosen range of every tensor
    methods: dict[str, str]  # tensor -> the method chosen
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # tensor -> method -> mean squared error
    held_out: int = 0  # samples scored on

    def record(self) -> dict:
        """For results.json (``details.range_methods``)."""
        counts = {str(m): sum(chosen == m for chosen in self.methods.values()) for m in CANDIDATES}
        return {"scored_on": f"{self.held_out} held-out calibration samples: squared error of each tensor on each "
                             "candidate's grid against float (calibration/auto_ranges.py)",
                "counts": counts, "tensors": dict(self.methods)}  # fmt: skip


def choose_ranges(model: onnx.ModelProto, estimators: dict, held_out: ArrayDataset, dtype: str,
                  symmetric: bool) -> RangeChoice:  # fmt: skip
    """Score every tensor's candidates on ``held_out`` and keep the best."""
    found = {t: candidate_ranges(e) for t, e in estimators.items()}
    grids = {t: {m: activation_params(lo, hi, dtype, symmetric) for m, (lo, hi) in c.items()}
             for t, (c, _) in found.items()}  # fmt: skip
    sums = {t: dict.fromkeys(g, 0.0) for t, g in grids.items()}
    counts = dict.fromkeys(grids, 0)
    for batch in read_tensors(model, list(grids), held_out):
        for name, value in batch.values.items():
            values = _scored_values(value[: batch.samples] if batch.rows == len(value) else value, found[name][1])
            counts[name] += values.size
            for method, grid in grids[name].items():
                sums[name][method] += float(np.sum((grid.fake_quantize(values) - values) ** 2))
    errors = {t: {str(m): s / max(counts[t], 1) for m, s in by_method.items()} for t, by_method in sums.items()}
    methods = {t: str(min(CANDIDATES, key=lambda m: by_method.get(str(m), np.inf))) for t, by_method in errors.items()}
    ranges = {t: found[t][0][Method(m)] for t, m in methods.items()}
    return RangeChoice(ranges, methods, errors, len(held_out))


def _scored_values(value: np.ndarray, floor: float | None) -> np.ndarray:
    flat = np.asarray(value, dtype=np.float64).reshape(-1)
    flat = flat[:: -(-flat.size // SCORED_VALUES)] if flat.size > SCORED_VALUES else flat
    flat = flat[np.abs(flat) <= FLAG_LIMIT]  # flags (masks: -inf, finfo.min) carry no signal to keep
    return flat if floor is None else np.maximum(flat, floor)  # below a Softmax input's floor no value matters
