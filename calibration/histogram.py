"""A streaming histogram whose memory does not grow with the number of samples.

The range is always [-R, R] with an even number of bins. When data falls outside, R doubles: the old range becomes
the middle half of the new one and each new bin is exactly the sum of two old bins, so no count is ever smeared or
approximated (PyTorch's HistogramObserver re-bins approximately; a two-pass min/max then histogram, as TensorRT and
onnxruntime do, costs a second pass of inference).

Binning every value of every activation costs several times the inference that produced it, so once a histogram
has binned ``EXACT_VALUES`` values, a batch with more than ``sample_limit`` values per sample is binned from a
strided subsample (a seeded random start, every ``stride``-th value, each counted ``stride`` times). The exact
start keeps small calibration sets exact, and the clipping methods, which live on the sparse tails, fed well: a
subsample's tail is what they are most sensitive to (tests/calibration/test_collect_speed_approx.py measures the error).
The extremes stay exact: the range still grows to the true peak, and
``observed_range`` reports the true min and max. Small batches are copied to a bounded buffer and binned together
(at most ``PENDING_VALUES`` values per histogram), because numpy's per-call overhead, not the arithmetic, is what a
small activation costs.
"""

from __future__ import annotations

import math

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
DEFAULT_BINS = 4096
DEFAULT_SAMPLE_LIMIT = 4096  # values binned per sample and tensor; about 1/8 of MobileNetV2's at 96x96
EXACT_VALUES = 1 << 18  # values binned exactly before subsampling starts
PENDING_VALUES = 1 << 16  # values buffered before binning: memory stays bounded whatever the sample count
_LCG_MULTIPLIER, _LCG_INCREMENT = 6364136223846793005, 1442695040888963407  # Knuth's MMIX; cheaper than a Generator


class StreamingHistogram:
    def __init__(self, bins: int = DEFAULT_BINS, sample_limit: int | None = None, seed: int = 0,
                 ignore_zeros: bool = False):  # fmt: skip
        """``sample_limit`` None bins every value (exact); otherwise at most about that many values per sample.
        ``ignore_zeros``: exact zeros are not counted (the extremes still include them)."""
        if bins % 4:
            raise ValueError("bins must be a multiple of 4 so the range can double by merging pairs")
        if sample_limit is not None and sample_limit < 1:
            raise ValueError(f"sample_limit must be None (bin every value) or at least 1, got {sample_limit}")
        self.bins = bins
        self.sample_limit = sample_limit
        self.ignore_zeros = ignore_zeros
        self.exact_values = EXACT_VALUES  # read at construction, so a test can lower it
        self._seen = 0  # values observed, sampled or not
        self._state = seed & (2**64 - 1)
        self._counts = np.zeros(bins, dtype=np.int64)
        self._pending: np.ndarray | None = None  # sampled values not binned yet (a copy: callers reuse buffers)
        self._pending_size = 0
        self._pending_weight = 1
        self.half_range = 0.0  # R; 0 until the first non-zero value arrives
        self.zeros = 0  # values seen while R was still 0
        self.low, self.high = np.inf, -np.inf  # exact extremes of everything observed

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        """``values`` of ``samples`` calibration samples (the subsample limit is per sample)."""
        values = np.asarray(values).reshape(-1)
        if not values.size:
            return
        low, high = float(values.min()), float(values.max())
        self.low, self.high = min(self.low, low), max(self.high, high)
        if not (math.isfinite(low) and math.isfinite(high)):
            # -inf (an attention mask's flag) or NaN has no bin: the extremes keep it, the bins take the rest
            values = values[np.isfinite(values)]
            if not values.size:
                return
            low, high = float(values.min()), float(values.max())
        peak = max(-low, high)
        if peak == 0.0:
            self._add_zeros(values.size)
            return
        self._grow_to(peak)  # values still pending lie within the old range, so within the new one too
        self._add_values(*self._sample(values, samples))

    @property
    def counts(self) -> np.ndarray:
        self._flush()
        return self._counts

    def _sample(self, values: np.ndarray, samples: int) -> tuple[np.ndarray, int]:
        exact = self.sample_limit is None or self._seen < self.exact_values
        self._seen += values.size
        stride = 1 if exact else -(-values.size // (self.sample_limit * samples))
        if stride == 1:
            return values, 1
        self._state = (self._state * _LCG_MULTIPLIER + _LCG_INCREMENT) & (2**64 - 1)
        return values[(self._state >> 33) % stride :: stride], stride

    def _add_values(self, values: np.ndarray, weight: int) -> None:
        if values.size >= PENDING_VALUES:
            self._count(values, weight)
            return
        if self._pending_size + values.size > PENDING_VALUES or weight != self._pending_weight:
            self._flush()
            self._pending_weight = weight
        if self._pending is None or values.dtype != self._pending.dtype:
            self._flush()
            self._pending = np.empty(PENDING_VALUES, dtype=values.dtype)
        self._pending[self._pending_size : self._pending_size + values.size] = values
        self._pending_size += values.size

    def _flush(self) -> None:
        if self._pending_size:
            self._count(self._pending[: self._pending_size], self._pending_weight)
        self._pending_size = 0

    def _count(self, values: np.ndarray, weight: int) -> None:
        counts = self._bin_counts(values)
        if self.ignore_zeros:  # binned, then taken out of their bin: cheaper than filtering them out first
            counts[self._bin_counts(np.zeros(1, values.dtype)).argmax()] -= values.size - np.count_nonzero(values)
        self._counts += counts * weight if weight != 1 else counts

    def _bin_counts(self, values: np.ndarray) -> np.ndarray:
        """Counts per bin. The bin of x is floor((x + R) * bins / 2R), computed in the values' own precision
        (float32 puts a value within float32 rounding of an edge in the neighbouring bin at worst); R itself goes
        to the last bin."""
        dtype = values.dtype if values.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        if self.half_range > FLOAT32_MAX / 2:  # x + R and R itself would overflow float32 (finfo.min masks)
            dtype = np.dtype(np.float64)
        scaled = np.add(values, dtype.type(self.half_range), dtype=dtype)
        scaled *= dtype.type(self.bins / (2 * self.half_range))
        counts = np.bincount(scaled.astype(np.intp), minlength=self.bins + 1)
        counts[self.bins - 1] += counts[self.bins :].sum()
        return counts[: self.bins]

    def _add_zeros(self, count: int) -> None:
        if self.ignore_zeros:
            return
        if self.half_range == 0.0:
            self.zeros += count
        else:
            self._counts[self.bins // 2] += count

    def _grow_to(self, peak: float) -> None:
        if self.half_range == 0.0:
            self.half_range = peak
            self._counts[self.bins // 2] += self.zeros  # zeros seen before any range existed
            self.zeros = 0
            return
        while peak > self.half_range:
            self._double()

    def _double(self) -> None:
        merged = self._counts.reshape(-1, 2).sum(axis=1)  # bins // 2 bins, each twice as wide
        quarter = self.bins // 4
        self._counts = np.zeros_like(self._counts)
        self._counts[quarter : quarter + merged.size] = merged
        self.half_range *= 2.0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.half_range, self.half_range, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        edges = self.edges
        return (edges[:-1] + edges[1:]) / 2

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.zeros

    def observed_range(self) -> tuple[float, float]:
        """The exact min and max of everything observed ((0, 0) before any non-zero value)."""
        if self.half_range == 0.0:
            return 0.0, 0.0
        return self.low, self.high

    def folded(self) -> tuple[np.ndarray, float]:
        """Counts of |x| over [0, R] (bins // 2 bins) and their bin width: for symmetric methods."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.half_range / half
