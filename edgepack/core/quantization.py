"""Quantization parameters from ranges: the one place scale and zero point are decided.

Every backend consumes these: the ONNX QDQ writer stores them as they are; the TFLite path hands TensorFlow's
fake-quant the *nudged* range (``representable_range``), from which TensorFlow recomputes exactly this scale and
zero point; QAT simulates with ``fake_quantize``. So what was calibrated (or trained) is what ships, in both files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class QuantParams:
    """real = scale * (q - zero_point); per-channel along ``axis`` when scale has more than one entry."""

    scale: np.ndarray  # float32, shape () or (channels,)
    zero_point: np.ndarray  # int64, same shape
    dtype: str  # int8 | uint8 | int16
    axis: int | None = None
    narrow: bool = False  # weights use [-127, 127] so that -w is representable (TFLite requires it)

    @property
    def qmin(self) -> int:
        return INTEGER_RANGES[self.dtype][0] + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return INTEGER_RANGES[self.dtype][1]

    def representable_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The real values of the lowest and highest integer: what TF's fake-quant min/max must be."""
        low = ((self.qmin - self.zero_point) * self.scale).astype(np.float32)
        high = ((self.qmax - self.zero_point) * self.scale).astype(np.float32)
        return low, high

    def quantize(self, values: np.ndarray) -> np.ndarray:
        scale, zero_point = self._broadcast(values.ndim)
        q = np.round(values / scale) + zero_point  # numpy rounds half to even, as ONNX and TFLite do
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zero_point = self._broadcast(q.ndim)
        return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def fake_quantize(self, values: np.ndarray) -> np.ndarray:
        return self.dequantize(self.quantize(values))

    def _broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        if self.axis is None:
            return self.scale, self.zero_point
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def as_unsigned(self) -> QuantParams:
        """The same grid as uint8 (zero point + 128): onnxruntime's fast x86 kernels want u8 activations."""
        if self.dtype != "int8" or self.narrow:
            raise ValueError("only int8 activation parameters have a uint8 twin")
        return QuantParams(self.scale, self.zero_point + 128, "uint8", self.axis)


def activation_params(low: float, high: float, dtype: str = "int8", symmetric: bool = False) -> QuantParams:
    """Affine parameters covering [low, high] (widened to include 0, which must be exact: padding, ReLU)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    qmin, qmax = INTEGER_RANGES[dtype]
    if symmetric or dtype == "int16":  # TFLite's 16x8 kernels require zero point 0
        bound = max(-low, high) or 1.0
        return QuantParams(np.float32(bound / qmax), np.int64(0), dtype)
    scale = np.float32((high - low) / (qmax - qmin) if high > low else 1.0 / (qmax - qmin))
    zero_point = np.int64(np.clip(np.round(qmin - low / scale), qmin, qmax))
    return QuantParams(scale, zero_point, dtype)


def weight_params(weights: np.ndarray, axis: int | None = 0) -> QuantParams:
    """Symmetric int8 over [-127, 127], per output channel along ``axis`` (None: one scale for the tensor)."""
    if axis is None:
        bound = np.float32(np.abs(weights).max())
        return QuantParams(np.float32(bound / 127 if bound > 0 else 1.0), np.int64(0), "int8", None, narrow=True)
    reduce = tuple(i for i in range(weights.ndim) if i != axis)
    bounds = np.abs(weights).max(axis=reduce).astype(np.float32)
    scales = np.where(bounds > 0, bounds / 127, 1.0).astype(np.float32)
    return QuantParams(scales, np.zeros(scales.shape, np.int64), "int8", axis, narrow=True)


@dataclass
class WeightPlan:
    initializer: str
    axis: int  # the output-channel axis of the stored tensor
    node: str


@dataclass
class BiasPlan:
    initializer: str
    activation: str  # the quantized input whose scale times the weight's gives the bias scale
    weight: str
    node: str


@dataclass
class QuantPlan:
    activations: list[str] = field(default_factory=list)  # calibrated points, in graph order
    shared: dict[str, str] = field(default_factory=dict)  # tensor -> the point whose grid it reuses
    fixed: dict[str, str] = field(default_factory=dict)  # tensor -> op type with a fixed output grid
    weights: list[WeightPlan] = field(default_factory=list)
    biases: list[BiasPlan] = field(default_factory=list)
    constants: dict[str, str] = field(default_factory=dict)  # output of an elementwise op -> its constant operand

    def quantized_tensors(self) -> list[str]:
        return self.activations + list(self.shared) + list(self.fixed)

    def for_nodes(self, nodes: set[str]) -> QuantPlan:
        """The same plan with only the weights and biases of ``nodes`` (the layers a file runs integer)."""
        return replace(self, weights=[w for w in self.weights if w.node in nodes],
                       biases=[b for b in self.biases if b.node in nodes])  # fmt: skip
