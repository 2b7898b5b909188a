"""Range estimators: stream batches of one tensor's values, return the (low, high) range to quantize it to.

All work on numpy statistics only, so one estimate drives the ONNX QDQ file and the TFLite file alike. The
histogram methods share one StreamingHistogram; memory stays flat however many samples are observed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import numpy as np
from edgepack.calibration.histogram import DEFAULT_SAMPLE_LIMIT, StreamingHistogram


class RangeEstimator(Protocol):
    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        """One batch of one tensor: the values of ``samples`` calibration samples, stacked on the first axis."""

    def range(self) -> tuple[float, float]: ...


class Method(StrEnum):
    MINMAX = "minmax"
    MOVING_AVERAGE = "moving_average"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    AUTO = "auto"  # per tensor, the best of the others on held-out calibration samples (calibration/auto_ranges.py)


class MinMaxEstimator:
    def __init__(self):
        self.low, self.high = np.inf, -np.inf

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        if values.size:
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))

    def range(self) -> tuple[float, float]:
        return (0.0, 0.0) if self.low > self.high else (self.low, self.high)


class MovingAverageMinMaxEstimator:
    """Exponential moving average of each sample's min and max (as TF's QAT observers, fed one sample a step): one
    outlier sample moves the range by (1 - momentum) of its excess, not all of it. Per sample, not per call, so the
    range does not depend on how many samples a call runs."""

    def __init__(self, momentum: float = 0.9):
        self.momentum = momentum
        self.low: float | None = None
        self.high = 0.0

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        if not values.size:
            return
        # a tensor whose first axis is not the samples' (one sample a call) is one observation
        rows = values.reshape(samples if values.shape[:1] == (samples,) else 1, -1)
        for low, high in zip(rows.min(axis=1).tolist(), rows.max(axis=1).tolist(), strict=True):
            self._update(low, high)

    def _update(self, low: float, high: float) -> None:
        if self.low is None:
            self.low, self.high = low, high
            return
        self.low = self.momentum * self.low + (1 - self.momentum) * low
        self.high = self.momentum * self.high + (1 - self.momentum) * high

    def range(self) -> tuple[float, float]:
        return (0.0, 0.0) if self.low is None else (self.low, self.high)


class HistogramEstimator:
    """``sample_limit``: bin at most about this many values per sample (a seeded strided subsample; min and max stay
    exact); None bins every value. See ``calibration.histogram`` and tests/calibration/test_collect_speed_approx.py
    for the error this costs."""

    ignore_zeros = False

    def __init__(self, symmetric: bool = False, levels: int = 256, sample_limit: int | None = None, seed: int = 0):
        self.symmetric = symmetric
        self.levels = levels  # of the integer grid that ships: 256 for 8-bit, 65536 for 16-bit
        self.histogram = StreamingHistogram(sample_limit=sample_limit, seed=seed, ignore_zeros=self.ignore_zeros)

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        self.histogram.observe(values, samples)

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

    def __init__(self, percentile: float = 99.99, symmetric: bool = False, sample_limit: int | None = None,
                 seed: int = 0):  # fmt: skip
        super().__init__(symmetric, sample_limit=sample_limit, seed=seed)
        self.percentile = percentile

    def _bound(self, counts: np.ndarray, width: float, levels: int) -> float:
        cumulative = np.cumsum(counts)
        index = int(np.searchsorted(cumulative, cumulative[-1] * self.percentile / 100.0))
        return (index + 1) * width


class EntropyEstimator(HistogramEstimator):
    """TensorRT's calibration (Migacz, GTC 2017): the clipping threshold whose quantized distribution has the
    least KL divergence from the observed one, quantized to the grid that ships: 128 levels per side for a signed
    int8 tensor (as TensorRT), all 256 for a non-negative one. Candidates are every ``stride`` bins upward."""

    # After a ReLU most values are exactly 0; that spike, spread over a merged level, makes every wide threshold
    # look costly and the search clips far too much (NVIDIA's pytorch-quantization skips zeros the same way).
    ignore_zeros = True

    def __init__(self, levels: int = 256, symmetric: bool = False, max_candidates: int = 512,
                 sample_limit: int | None = None, seed: int = 0):  # fmt: skip
        super().__init__(symmetric, levels, sample_limit, seed)
        self.max_candidates = max_candidates

    def _bound(self, counts: np.ndarray, width: float, levels: int) -> float:
        last = int(np.flatnonzero(counts)[-1]) + 1
        if last <= levels:  # no finer than the histogram: nothing to gain from clipping (16-bit grids)
            return last * width
        stride = max(1, (last - levels) // self.max_candidates)
        candidates = np.arange(levels, last + 1, stride)
        divergences = kl_after_clipping_all(counts[:last], candidates, levels)
        # Ties go to the widest clip: a tensor of one value (an exported constant such as a LayerNorm weight behind
        # an Identity) is one spike, which every candidate clips into its last bin at KL 0; the first candidate
        # clipped MiniBert's LayerNorm weights of 1.0 to 0.125.
        best = divergences.size - 1 - int(np.argmin(divergences[::-1]))
        return (candidates[best] + 0.5) * width


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


KL_CHUNK = 32  # candidates per step of the vectorised KL search


def kl_after_clipping_all(counts: np.ndarray, keeps: np.ndarray, levels: int, eps: float = 1e-10) -> np.ndarray:
    """``kl_after_clipping`` for every ``keep`` in ``keeps`` at once, from prefix sums over the bins.

    Within one level Q is constant (S/n over its n non-empty bins), so a level's share of sum p log(p/q) is
    (sum c log c - S log(S/n)) / T plus terms in log T and log sum(Q): O(levels) per candidate instead of O(bins).
    Only the last kept bin, which P's clipped tail joins, is corrected on its own."""
    c = counts.astype(np.float64)
    prefix = [np.concatenate([[0.0], np.cumsum(x)]) for x in (c, _c_log_c(c), (c > 0).astype(np.float64))]
    keeps = np.asarray(keeps)
    # In chunks of candidates: (candidates x levels) temporaries small enough to stay in cache are several times
    # faster than one large batch.
    chunks = np.array_split(keeps, max(1, -(-keeps.size // KL_CHUNK)))
    return np.concatenate([_kl_chunk(c, prefix, chunk[:, None], levels, eps) for chunk in chunks])


def _kl_chunk(c: np.ndarray, prefix: list[np.ndarray], keeps: np.ndarray, levels: int, eps: float) -> np.ndarray:
    total, log_total = prefix[0][-1], np.log(prefix[0][-1])
    edges = (np.arange(levels + 1)[None, :] * keeps) // levels  # level l spans bins edges[l] .. edges[l + 1] - 1
    sums, c_log_c, nonempty = (np.diff(cumulative[edges], axis=1) for cumulative in prefix)
    log_q_total = np.log(np.maximum(prefix[0][keeps], eps))  # sum(Q) = sum of the kept bins
    log_level_q = np.log(np.where(sums > 0, sums / np.maximum(nonempty, 1), 1)) - log_q_total
    inside = (c_log_c - sums * (log_total + log_level_q)).sum(axis=1) / total
    last_bin = c[keeps[:, 0] - 1]
    tail = last_bin + total - prefix[0][keeps[:, 0]]  # P's last bin with everything beyond it clipped in
    last_level_q = log_level_q[:, -1]
    return inside - _p_log_p_over_q(last_bin, last_level_q, total) + _last_bin_term(tail, last_bin, last_level_q,
                                                                                    total, eps)  # fmt: skip


def _c_log_c(c: np.ndarray) -> np.ndarray:
    return np.where(c > 0, c * np.log(np.where(c > 0, c, 1)), 0.0)


def _p_log_p_over_q(p: np.ndarray, log_q: np.ndarray, total: float) -> np.ndarray:
    """(p / T) log((p / T) / q) where p > 0, else 0."""
    safe = np.where(p > 0, p, 1)
    return np.where(p > 0, safe / total * (np.log(safe / total) - log_q), 0.0)


def _last_bin_term(tail: np.ndarray, last_bin: np.ndarray, log_level_q: np.ndarray, total: float, eps: float):
    """An empty last bin gets no share of Q, so its clipped tail is compared with eps (as ``_kl`` floors Q)."""
    return np.where(last_bin > 0, _p_log_p_over_q(tail, log_level_q, total),
                    _p_log_p_over_q(tail, np.full_like(tail, np.log(eps)), total))  # fmt: skip


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    p, q = p / p.sum(), q / max(q.sum(), eps)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], eps))))


class MSEEstimator(HistogramEstimator):
    """The clipping bound that minimises the expected squared quantization error over the histogram: rounding
    error (step^2 / 12) for values inside, distance to the bound for values clipped."""

    def __init__(self, levels: int = 256, symmetric: bool = False, candidates: int = 200,
                 sample_limit: int | None = None, seed: int = 0):  # fmt: skip
        super().__init__(symmetric, levels, sample_limit, seed)
        self.candidates = candidates

    def _bound(self, counts: np.ndarray, width: float, levels: int) -> float:
        bounds = np.linspace(1.0 / self.candidates, 1.0, self.candidates) * counts.size * width
        return float(bounds[int(np.argmin(clipping_errors(counts, width, bounds, levels)))])


def clipping_errors(counts: np.ndarray, width: float, bounds: np.ndarray, levels: int) -> np.ndarray:
    """For each bound b: sum over bins (centre x, count c) of c * (x - b)^2 where x > b, else c * step^2 / 12.
    The clipped part is sum(c x^2) - 2 b sum(c x) + b^2 sum(c) over the bins past b, read from suffix sums."""
    centers = (np.arange(counts.size) + 0.5) * width
    weighted = counts.astype(np.float64)
    suffix = [np.concatenate([np.cumsum(x[::-1])[::-1], [0.0]]) for x in (weighted, weighted * centers,
                                                                          weighted * centers**2)]  # fmt: skip
    first_clipped = np.searchsorted(centers, bounds, side="right")  # bins whose centre exceeds the bound
    count, first, second = (s[first_clipped] for s in suffix)
    clipped = second - 2 * bounds * first + bounds**2 * count
    steps = bounds / max(levels - 1, 1)
    return np.maximum(clipped, 0.0) + (suffix[0][0] - count) * steps**2 / 12


def make_estimator(method: Method | str, *, symmetric: bool = False, percentile: float = 99.99, levels: int = 256,
                   sampled: bool = True, seed: int = 0) -> RangeEstimator:  # fmt: skip
    """One estimator for one tensor. ``levels`` is 256 for 8-bit and 65536 for 16-bit quantization. ``sampled``:
    percentile and mse bin a subsample of large batches (``DEFAULT_SAMPLE_LIMIT`` values, drawn with ``seed``).
    Entropy always bins every value: its KL search reads the histogram's sparse fine structure, and subsampling
    moved its clip by up to 25% on the digits conv net (percentile and mse by under 5%)."""
    method = Method(method)
    if method == Method.AUTO:
        raise ValueError("method 'auto' chooses among the estimators per tensor: calibration.auto_ranges")
    limit = DEFAULT_SAMPLE_LIMIT if sampled else None
    if method == Method.MINMAX:
        return MinMaxEstimator()
    if method == Method.MOVING_AVERAGE:
        return MovingAverageMinMaxEstimator()
    if method == Method.PERCENTILE:
        return PercentileEstimator(percentile, symmetric, sample_limit=limit, seed=seed)
    if method == Method.ENTROPY:
        return EntropyEstimator(levels=levels, symmetric=symmetric)
    return MSEEstimator(levels=levels, symmetric=symmetric, sample_limit=limit, seed=seed)
