"""The torch pieces of QAT: fake-quant with straight-through gradients, and the weight modes.

Every scale and zero point comes from ``calibration.params`` (``activation_params``, ``weight_params``), the code
the exporters use, so the grid simulated in training is the grid written to the ONNX QDQ and TFLite files. The
integer arithmetic is torch's: ``torch.round`` rounds half to even, as numpy, ONNX and TFLite do.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgepack.compression.options import WeightMode
from edgepack.core.quantization import INTEGER_RANGES, QuantParams, activation_params, weight_params

INT32_RANGE = (-(2**31), 2**31 - 1)


WEIGHT_BITS = {WeightMode.INT8: 8, WeightMode.BINARY: 1, WeightMode.TERNARY: 2}


class _FakeQuantize(torch.autograd.Function):
    """(clamp(round(x / s) + z, qmin, qmax) - z) * s; gradient: to x inside the grid only, LSQ's to the scale."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        unclamped = torch.round(x / scale) + zero_point
        q = torch.clamp(unclamped, qmin, qmax)
        ctx.save_for_backward(x, scale, zero_point, q, (unclamped >= qmin) & (unclamped <= qmax))
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point, q, inside = ctx.saved_tensors
        grad_scale = None
        if ctx.needs_input_grad[1]:
            # LSQ (Esser et al. 2020): d out / d scale = round(x/s) - x/s inside, the clamped level - z outside.
            scaled = x / scale
            grad_scale = (grad * torch.where(inside, torch.round(scaled) - scaled, q - zero_point)).sum_to_size(
                scale.shape
            )
        return grad * inside, grad_scale, None, None, None


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized tensor exactly; backward: the gradient goes to the float tensor unchanged."""

    @staticmethod
    def forward(ctx, values, quantized):
        return quantized.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize(x: torch.Tensor, params: QuantParams, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``params.fake_quantize`` in torch, bit for bit; ``scale`` (same value) carries a gradient when given."""
    shape = [1] * x.dim()
    if params.axis is not None:
        shape[params.axis] = -1
    exact = torch.as_tensor(np.asarray(params.scale, np.float32)).reshape(shape)
    zero_point = torch.as_tensor(np.asarray(params.zero_point, np.float32)).reshape(shape)
    if scale is not None:
        exact = scale.reshape(shape)
    return _FakeQuantize.apply(x, exact, zero_point, params.qmin, params.qmax)


class ActivationQuantizer(nn.Module):
    """Fake-quant of one planned activation on the grid ``activation_params(lo, hi, dtype, symmetric)``.

    The range [lo, hi] starts at the calibrated one; in training it follows the batches' min/max (an exponential
    moving average, ``momentum`` = weight of the new batch) or, with ``learn_range``, is learned (LSQ-style
    gradient on the scale, passed to lo/hi). ``fixed`` grids (Softmax, Sigmoid, Tanh outputs) never move.
    """

    def __init__(
        self,
        low: float,
        high: float,
        dtype: str,
        symmetric: bool,
        *,
        momentum: float = 0.01,
        learn_range: bool = False,
        fixed: QuantParams | None = None,
    ):
        super().__init__()
        self.dtype, self.symmetric, self.momentum, self.fixed = dtype, symmetric, momentum, fixed
        # float64: calibrated ranges are Python floats; a float32 copy could move the grid by one ulp.
        bounds = torch.tensor([low, high], dtype=torch.float64)
        self.learn_range = learn_range and fixed is None
        if self.learn_range:
            self.bounds = nn.Parameter(bounds)
        else:
            self.register_buffer("bounds", bounds)

    def range(self) -> tuple[float, float]:
        low, high = self.bounds.detach().tolist()
        return low, high

    def params(self) -> QuantParams:
        return self.fixed if self.fixed is not None else activation_params(*self.range(), self.dtype, self.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.learn_range and self.fixed is None:
            self._observe(x)
        params = self.params()
        return fake_quantize(x, params, self._scale_with_gradient(params) if self.learn_range else None)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        batch = torch.stack([x.min(), x.max()]).to(torch.float64)
        self.bounds.mul_(1 - self.momentum).add_(self.momentum * batch)

    def _scale_with_gradient(self, params: QuantParams) -> torch.Tensor:
        """The exact scale of ``params`` as value, with the gradient of the same formula written in torch."""
        low, high = self.bounds[0].clamp(max=0), self.bounds[1].clamp(min=0)
        qmin, qmax = INTEGER_RANGES[self.dtype]
        if self.symmetric or self.dtype == "int16":
            formula = torch.maximum(-low, high) / qmax
        else:
            formula = (high - low) / (qmax - qmin)
        exact = torch.as_tensor(np.asarray(params.scale, np.float32))
        return exact + (formula - formula.detach()).float()  # adds exactly 0.0: the value stays exact

    def extra_repr(self) -> str:
        grid = "fixed" if self.fixed is not None else ("learned" if self.learn_range else "observed")
        return f"{self.dtype}, symmetric={self.symmetric}, range={grid}"


def shaped_weight(weight: torch.Tensor, mode: WeightMode) -> torch.Tensor:
    """The weight the mode allows (no gradient): unchanged for int8, two or three values per output channel."""
    if mode == WeightMode.INT8:
        return weight
    magnitude = weight.abs().flatten(1)
    if mode == WeightMode.BINARY:
        alpha = magnitude.mean(dim=1)
        return torch.where(weight >= 0, 1.0, -1.0) * _per_channel(alpha, weight)
    threshold = 0.7 * magnitude.mean(dim=1)
    kept = magnitude > threshold[:, None]
    alpha = (magnitude * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)
    mask = (weight.abs() > _per_channel(threshold, weight)).to(weight.dtype)
    return torch.sign(weight) * mask * _per_channel(alpha, weight)


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape([-1] + [1] * (like.dim() - 1))


class QuantizedLayer(nn.Module):
    """A Conv/Linear whose weight and bias are simulated as the exporters write them.

    Weight: ``weight_params`` (per output channel, narrow int8) of the current (mode-shaped) weight, every forward.
    Bias: int32 with scale = input scale x weight scale, the input scale read from ``input_quantizer`` now.
    Gradients pass straight through to the float weight and bias.
    """

    def __init__(self, layer: nn.Module, mode: WeightMode, input_quantizer: ActivationQuantizer | None):
        super().__init__()
        self.layer, self.mode = layer, WeightMode(mode)
        self._input_quantizer = (input_quantizer,)  # a tuple: referenced, not registered a second time

    def simulated_weight(self) -> tuple[torch.Tensor, QuantParams]:
        weight = self.layer.weight
        shaped = shaped_weight(weight.detach(), self.mode)
        params = weight_params(shaped.cpu().numpy(), axis=0)
        return _StraightThrough.apply(weight, fake_quantize(shaped, params)), params

    def simulated_bias(self, weight_grid: QuantParams) -> torch.Tensor | None:
        bias, source = self.layer.bias, self._input_quantizer[0]
        if bias is None or source is None:
            return bias
        scale = torch.as_tensor((source.params().scale * weight_grid.scale).astype(np.float32))
        q = torch.clamp(torch.round(bias.detach() / scale), *INT32_RANGE)
        return _StraightThrough.apply(bias, q * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, grid = self.simulated_weight()
        bias = self.simulated_bias(grid)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, weight, bias)
        return self.layer._conv_forward(x, weight, bias)

    def exported_layer(self) -> nn.Module:
        """A float copy holding the weight the export must quantize (the binary/ternary values for those modes)."""
        import copy

        layer = copy.deepcopy(self.layer)
        with torch.no_grad():
            layer.weight.copy_(shaped_weight(layer.weight, self.mode))
        return layer


WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def packed_weight_bytes(module: nn.Module, mode: WeightMode) -> float:
    """Bytes of the weights packed at the mode's bits per weight (1 binary, 2 ternary, 8 int8), plus one float32
    scale per output channel. A figure for bit-packing kernels: standard TFLite/ONNX runtimes have no binary or
    ternary kernels and run these weights as int8 (8 bits each)."""
    total = 0.0
    for layer in module.modules():
        if isinstance(layer, WEIGHTED_LAYERS):
            total += layer.weight.numel() * WEIGHT_BITS[WeightMode(mode)] / 8 + 4 * layer.weight.shape[0]
    return total
