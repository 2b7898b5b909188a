"""A streaming histogram whose memory does not grow with the number of samples.

The range is always [-R, R] with an even number of bins. When data falls outside, R doubles: the old range becomes
the middle half of the new one and each new bin is exactly the sum of two old bins, so no count is ever smeared or
approximated (PyTorch's HistogramObserver re-bins approximately; a two-pass min/max then histogram, as TensorRT and
onnxruntime do, costs a second pass of inference).
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 4096


class StreamingHistogram:
    def __init__(self, bins: int = DEFAULT_BINS):
        if bins % 4:
            raise ValueError("bins must be a multiple of 4 so the range can double by merging pairs")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.half_range = 0.0  # R; 0 until the first non-zero value arrives
        self.zeros = 0  # values seen while R was still 0

    def observe(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        peak = float(np.abs(values).max()) if values.size else 0.0
        if peak == 0.0:
            self._add_zeros(values.size)
            return
        self._grow_to(peak)
        self.counts += np.histogram(values, bins=self.bins, range=(-self.half_range, self.half_range))[0]

    def _add_zeros(self, count: int) -> None:
        if self.half_range == 0.0:
            self.zeros += count
        else:
            self.counts[self.bins // 2] += count

    def _grow_to(self, peak: float) -> None:
        if self.half_range == 0.0:
            self.half_range = peak
            self.counts[self.bins // 2] += self.zeros  # zeros seen before any range existed
            self.zeros = 0
            return
        while peak > self.half_range:
            self._double()

    def _double(self) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)  # bins // 2 bins, each twice as wide
        quarter = self.bins // 4
        self.counts = np.zeros_like(self.counts)
        self.counts[quarter : quarter + merged.size] = merged
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
        """Edges of the outermost non-empty bins: the min/max to within one bin width."""
        nonzero = np.flatnonzero(self.counts)
        if nonzero.size == 0:
            return 0.0, 0.0
        edges = self.edges
        return float(edges[nonzero[0]]), float(edges[nonzero[-1] + 1])

    def folded(self) -> tuple[np.ndarray, float]:
        """Counts of |x| over [0, R] (bins // 2 bins) and their bin width: for symmetric methods."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.half_range / half
