"""Ranges for attention: values that are flags, not signal, must not set an integer grid.

A transformer adds a mask to its attention scores before the Softmax: 0 where a position counts, a huge negative
number where it is padding (HF BERT: torch.finfo(float32).min = -3.4e38). Min-max over padded calibration samples
then spreads the Softmax input's int8 grid over 3.4e38, so every real score rounds to the same level, and the
mask's own grid has a scale of 1.3e36, for which LiteRT's ADD kernel cannot compute a multiplier and aborts the
process (FINDINGS.md saw the same explosion in other tools). Two rules, one per kind of tensor:

- A Softmax input needs no grid below its lowest row maximum minus ln(2 x levels x n) (n positions along the
  Softmax axis): a value that far below the largest of its row gets less than half an output step of weight, all n
  of them together too, in every row seen. So its range is cut there, exactly where it cannot change the result.
  Rows whose maximum is itself beyond the flag limit are fully masked; any value is as good as another for them.
- A tensor whose calibrated range still reaches beyond ``FLAG_LIMIT`` holds flags (the mask itself): it stays
  float in both files, the op reading it runs in float between edgepack's grids, and results.json says why.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from edgepack.calibration.estimators import RangeEstimator

FLAG_LIMIT = 1e6  # no activation that carries signal comes near this; masks use 1e4 to 3.4e38


class FlagAwareEstimator:
    """Whether a tensor holds flags is decided on its exact extremes, for every method: a clipping method (percentile,
    mse, entropy) could otherwise clip a rarely padded mask to a grid near 0, and int8 would stop masking. Once the
    extremes pass ``FLAG_LIMIT`` the tensor stays float, so ``inner`` is not fed any more."""

    def __init__(self, inner: RangeEstimator):
        self.inner = inner
        self.low, self.high = math.inf, -math.inf

    @property
    def flagged(self) -> bool:
        return max(-self.low, self.high) > FLAG_LIMIT  # -inf and inf too

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        if not values.size:
            return
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        if not self.flagged:
            self.inner.observe(values, samples)

    def range(self) -> tuple[float, float]:
        return (self.low, self.high) if self.flagged else self.inner.range()


class SoftmaxInputEstimator:
    """``inner`` sees the values cut at the running floor; the range never reaches below the final floor."""

    def __init__(self, inner: RangeEstimator, axis: int, levels: int):
        self.inner, self.axis, self.levels = inner, axis, levels
        self.floor = math.inf

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        if not values.size:
            return
        row_max = values.max(axis=self.axis)
        real = row_max[row_max > -FLAG_LIMIT]
        if real.size:
            margin = math.log(2 * self.levels * values.shape[self.axis])
            self.floor = min(self.floor, float(real.min()) - margin)
        self.inner.observe(np.maximum(values, self.floor) if math.isfinite(self.floor) else values, samples)

    def range(self) -> tuple[float, float]:
        low, high = self.inner.range()
        return (max(low, self.floor), high) if math.isfinite(self.floor) else (low, high)


def softmax_inputs(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> the axis of the Softmax reading it (opset 13 default -1; before 13 the rows are flattened from
    ``axis`` = 1 on, so the last axis is taken: a cut that holds per last-axis row holds for the wider rows too)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    found = {}
    for node in model.graph.node:
        if node.op_type == "Softmax":
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            found[node.input[0]] = axis if opset >= 13 else -1
    return found


def flag_tensors(ranges: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Tensor -> why it stays float, for every calibrated range reaching beyond FLAG_LIMIT."""
    return {t: f"calibrated range [{lo:.3g}, {hi:.3g}] reaches beyond +-{FLAG_LIMIT:g}: flags such as an attention "
               "mask, not signal; an integer grid that wide loses every real value (and aborts LiteRT)"
            for t, (lo, hi) in ranges.items() if max(abs(lo), abs(hi)) > FLAG_LIMIT}  # fmt: skip
