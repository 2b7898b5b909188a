"""Range estimators: stream batches of one tensor's values, return the (low, high) range to quantize it to.

All work on numpy statistics only, so one estimate drives the ONNX QDQ file and the TFLite file alike. The
histogram methods share one StreamingHistogram; memory stays flat however many samples are observed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import numpy as np

from calibration.histogram import StreamingHistogram


class RangeEstimator(Protocol):
    def observe(self, values: np.ndarray) -> None: ...

    def range(self) -> tuple[float, float]: ...


class Method(StrEnum):
    MINMAX = "minmax"
    MOVING_AVERAGE = "moving_average"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class MinMaxEstimator:
    def __init__(self):
        self.low, self.high = np.inf, -np.inf

    def observe(self, values: np.ndarray) -> None:
        if values.size:
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))

    def range(self) -> tuple[float, float]:
        return (0.0, 0.0) if self.low > self.high else (self.low, self.high)


class MovingAverageMinMaxEstimator:
    """Exponential moving average of each batch's min and max (as TF's QAT observers): one outlier batch
    moves the range by (1 - momentum) of its excess, not all of it."""

    def __init__(self, momentum: float = 0.9):
        self.momentum = momentum
        self.low: float | None = None
        self.high = 0.0

    def observe(self, values: np.ndarray) -> None:
        if not values.size:
            return
        low, high = float(values.min()), float(values.max())
        if self.low is None:
            self.low, self.high = low, high
            return
        self.low = self.momentum * self.low + (1 - self.momentum) * low
        self.high = self.momentum * self.high + (1 - self.momentum) * high

    def range(self) -> tuple[float, float]:
        return (0.0, 0.0) if self.low is None else (self.low, self.high)


class HistogramEstimator:
    def __init__(self, symmetric: bool = False, levels: int = 256):
        self.symmetric = symmetric
        self.levels = levels  # of the integer grid that ships: 256 for 8-bit, 65536 for 16-bit
        self.histogram = StreamingHistogram()

    def observe(self, values: np.ndarray) -> None:
        self.histogram.observe(values)

    def range(self) -> tuple[float, float]:
        if self.histogram.total == 0 or self.histogram.half_range == 0.0:
            return 0.0, 0.0
        if self.symmetric or self._signed():
            bound = self._symmetric_bound()
            return (-bound, bound) if self.symmetric else self._clip_observed(bound)
        return 0.0, self._non_negative_bound()

    def _signed(self) -> bool:
        return self.histogram.observed_range()[0] < 0

    def _clip_observed(self, bound: float) -> tuple[float, float]:
        """Asymmetric signed data: clip each side at the bound the method chose, never beyond what was seen."""
        low, high = self.histogram.observed_range()
        return max(low, -bound), min(high, bound)

    def _symmetric_bound(self) -> float:
        counts, width = self.histogram.folded()
        return self._bound(counts, width, self.levels // 2)  # each sign gets half the grid

    def _non_negative_bound(self) -> float:
        half = self.histogram.bins // 2
        return self._bound(self.histogram.counts[half:], self.histogram.half_range / half, self.levels)

    def _bound(self, counts: np.ndarray, width: float, levels: int) -> float:
        """The clipping bound over |x| (or x >= 0) histogram ``counts``, for a grid of ``levels`` steps there."""
        raise NotImplementedError


class PercentileEstimator(HistogramEstimator):
    """The value below which ``percentile`` % of |x| (or of x, for non-negative tensors) lies."""

    def __init__(self, percentile: float = 99.99, symmetric: bool = False):
        super().__init__(symmetric)
        self.percentile = percentile

    def _bound(self, counts: np.ndarray, width: float, levels: int) -> float:
        cumulative = np.cumsum(counts)
        index = int(np.searchsorted(cumulative, cumulative[-1] * self.percentile / 100.0))
        return (index + 1) * width


class EntropyEstimator(HistogramEstimator):
    """TensorRT's calibration (Migacz, GTC 2017): the clipping threshold whose quantized distribution has the
    least KL divergence from the observed one, quantized to the grid that ships: 128 levels per side for a signed
    int8 tensor (as TensorRT), all 256 for a non-negative one. Candidates are every ``stride`` bins upward."""

    def __init__(self, levels: int = 256, symmetric: bool = False, max_candidates: int = 512):
        super().__init__(symmetric, levels)
        self.max_candidates = max_candidates

    def observe(self, values: np.ndarray) -> None:
        # After a ReLU most values are exactly 0; that spike, spread over a merged level, makes every wide threshold
        # look costly and the search clips far too much (NVIDIA's pytorch-quantization skips zeros the same way).
        values = np.asarray(values)
        self.histogram.observe(values[values != 0])

    def _bound(self, counts: np.ndarray, width: float, levels: int) -> float:
        last = int(np.flatnonzero(counts)[-1]) + 1
        if last <= levels:  # no finer than the histogram: nothing to gain from clipping (16-bit grids)
            return last * width
        stride = max(1, (last - levels) // self.max_candidates)
        candidates = range(levels, last + 1, stride)
        divergences = [kl_after_clipping(counts[:last], i, levels) for i in candidates]
        return (candidates[int(np.argmin(divergences))] + 0.5) * width


def kl_after_clipping(counts: np.ndarray, keep: int, levels: int) -> float:
    """KL(P || Q): P = the first ``keep`` bins with the rest clipped into the last; Q = P merged into ``levels``
    levels and spread back evenly over the bins that were non-empty."""
    reference = counts[:keep].astype(np.float64)
    reference[-1] += counts[keep:].sum()
    starts = (np.arange(levels) * keep) // levels
    level_sums = np.add.reduceat(counts[:keep].astype(np.float64), starts)
    nonempty = counts[:keep] > 0
    level_nonempty = np.add.reduceat(nonempty.astype(np.float64), starts)
    level_of_bin = np.repeat(np.arange(levels), np.diff(np.append(starts, keep)))
    expanded = np.where(nonempty, level_sums[level_of_bin] / np.maximum(level_nonempty[level_of_bin], 1), 0.0)
    return _kl(reference, expanded)


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    p, q = p / p.sum(), q / max(q.sum(), eps)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], eps))))


class MSEEstimator(HistogramEstimator):
    """The clipping bound that minimises the expected squared quantization error over the histogram: rounding
    error (step^2 / 12) for values inside, distance to the bound for values clipped."""

    def __init__(self, levels: int = 256, symmetric: bool = False, candidates: int = 200):
        super().__init__(symmetric, levels)
        self.candidates = candidates

    def _bound(self, counts: np.ndarray, width: float, levels: int) -> float:
        centers = (np.arange(counts.size) + 0.5) * width
        bounds = np.linspace(1.0 / self.candidates, 1.0, self.candidates) * counts.size * width
        steps = bounds / max(levels - 1, 1)
        clipped = np.maximum(centers[None, :] - bounds[:, None], 0.0) ** 2
        rounding = np.where(centers[None, :] <= bounds[:, None], steps[:, None] ** 2 / 12, 0.0)
        errors = ((clipped + rounding) * counts[None, :]).sum(axis=1)
        return float(bounds[int(np.argmin(errors))])


def make_estimator(method: Method | str, *, symmetric: bool = False, percentile: float = 99.99,
                   levels: int = 256) -> RangeEstimator:  # fmt: skip
    """One estimator for one tensor. ``levels`` is 256 for 8-bit and 65536 for 16-bit quantization."""
    method = Method(method)
    if method == Method.MINMAX:
        return MinMaxEstimator()
    if method == Method.MOVING_AVERAGE:
        return MovingAverageMinMaxEstimator()
    if method == Method.PERCENTILE:
        return PercentileEstimator(percentile, symmetric)
    if method == Method.ENTROPY:
        return EntropyEstimator(levels=levels, symmetric=symmetric)
    return MSEEstimator(levels=levels, symmetric=symmetric)
