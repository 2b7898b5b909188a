"""Post-training quantization, written once: plan the tensors, collect ranges, decide parameters.

The result, a ``Calibration``, is all any backend consumes: the ONNX QDQ writer and the TFLite fake-quant
lowering both read ``Calibration.activations`` and derive weights the same way (``edgepack.core.quantization``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import onnx
from edgepack.calibration.attention_masks import (
    FlagAwareEstimator,
    SoftmaxInputEstimator,
    flag_tensors,
    softmax_inputs,
)
from edgepack.calibration.auto_ranges import CandidateEstimator, choose_ranges, pick_plan
from edgepack.calibration.collect import check_calibration_data, collect_estimators
from edgepack.calibration.estimators import Method, MinMaxEstimator, make_estimator
from edgepack.calibration.held_out import can_hold_out, split_held_out
from edgepack.calibration.plan import fixed_output_params, plan_quantization
from edgepack.calibration.smoothing import SmoothQuant
from edgepack.converters.onnx_info import constant_values
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import QuantParams, QuantPlan, activation_params


class QuantScheme(BaseModel):
    """What 'quantized' means for one artifact; QAT simulates exactly this."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    precision: Literal["int8", "int16x8"] = Field(
        "int8", description="int8, or int16x8 (16-bit activations, 8-bit weights)."
    )
    method: Method = Field(Method.AUTO, description="Range estimator: auto (the default: per activation tensor, "
        "whichever of minmax, percentile, mse and entropy causes the least error at the next layer's output on "
        "calibration samples held out from fitting the ranges (calibration/auto_ranges.py; each tensor's choice is "
        "in details.range_methods), minmax, "
        "moving_average, percentile, entropy (KL) or mse (exactly that method for every tensor).")  # fmt: skip
    percentile: float = Field(99.99, gt=50, le=100, description="For method 'percentile'.")
    symmetric_activations: bool = Field(False, description="int8 activations with zero point 0 (int16 always is).")
    samples: int = Field(256, gt=0, description="Calibration samples used (the first N of the data).")
    skip_nodes: list[str] = Field([], description="ONNX node names kept in float (mixed precision).")
    per_channel_weights: bool = Field(True, description="One int8 scale per output channel of each weight (max|w| / "
                                      "127 per channel); false: one scale per weight tensor.")  # fmt: skip
    cross_layer_equalization: bool = Field(False, description="Before calibrating, rescale the channels of "
        "Conv/Gemm -> ReLU -> Conv/Gemm pairs so their weight ranges match (Nagel et al. 2019); the float model "
        "keeps its function and is written as an artifact of its own (onnx-fp32-equalized).")  # fmt: skip
    bias_correction: bool | Literal["auto"] = Field("auto", description="After calibrating, subtract from each "
        "quantized Conv/Gemm bias the mean output error its int8 weights cause on the calibration data (Nagel et al. "
        "2019). auto (the default): computed, then kept only if the whole model's outputs on the held-out "
        "calibration samples come closer to float's with it than without (softmax KL for a classifier; the two "
        "errors are in details.bias_correction_choice); off when the data is too small to hold samples out, and "
        "after gptq or adaround rounding, which leave no mean error to correct. true alone implies weight_rounding: "
        "nearest.")  # fmt: skip
    smooth_quant: SmoothQuant | None = Field(None, description="Before calibrating, move activation outliers into "
        "the weights of the MatMul/Gemm layers reading them (SmoothQuant, Xiao et al. 2023), e.g. {alpha: 0.5}; "
        "the float model keeps its function (calibration/smoothing.py).")  # fmt: skip
    weight_rounding: Literal["nearest", "gptq", "adaround"] = Field("gptq", description="How int8 weights are "
        "rounded: gptq (the default): per Conv/Gemm/MatMul, round one input column at a time and move its error onto "
        "the columns not rounded yet, against the layer's float inputs on the calibration data (Frantar et al. "
        "2023; seconds, calibration/gptq.py); nearest; adaround: learn up or down for each weight against the "
        "layer's float output (Nagel et al. 2020; minutes, calibration/adaround.py). Same scales and integers in "
        "both files; each layer's error in the details.")  # fmt: skip

    @model_validator(mode="after")
    def _bias_correction_corrects_nearest_rounding(self) -> QuantScheme:
        """Bias correction removes the mean output error of nearest rounding; gptq and adaround minimise each
        layer's whole output error, mean included, and leave the weights on their grid, so nothing would be left
        to correct. Asking for bias correction alone therefore means nearest rounding."""
        if self.bias_correction is not True or self.weight_rounding == "nearest":
            return self
        if "weight_rounding" in self.model_fields_set:
            raise ValueError(f"bias_correction: true corrects the mean error of nearest rounding, but weight_rounding "
                             f"{self.weight_rounding!r} already minimises each layer's output error, mean included; "
                             "keep one: drop bias_correction, or set weight_rounding: nearest")  # fmt: skip
        self.weight_rounding = "nearest"
        return self

    @property
    def activation_dtype(self) -> str:
        return "int16" if self.precision == "int16x8" else "int8"


@dataclass
class Calibration:
    scheme: QuantScheme
    plan: QuantPlan
    ranges: dict[str, tuple[float, float]]  # what the estimator saw, per calibrated tensor
    activations: dict[str, QuantParams]  # every quantized activation: calibrated, shared and fixed
    kept_float: dict[str, str] = field(default_factory=dict)  # planned tensors left float by calibration, and why
    range_methods: dict = field(default_factory=dict)  # method auto: what each tensor's range came from, and why
    constants: dict[str, QuantParams] = field(default_factory=dict)  # constant operands on a grid (16x8 only)

    def fake_quant_ranges(self) -> dict[str, tuple[float, float]]:
        """Each quantized activation's representable range: what the TFLite lowering's fake-quant nodes take, and
        from which TensorFlow recomputes exactly these scales and zero points."""
        grids = self.activations | self.constants  # the lowering applies a constant's to the op reading it
        return {t: tuple(float(v) for v in p.representable_range()) for t, p in grids.items()}


def calibrate(model: onnx.ModelProto, dataset: ArrayDataset, scheme: QuantScheme, source: str = "calibration data",
              held_out: ArrayDataset | None = None, classifier: bool = False) -> Calibration:  # fmt: skip
    """Many samples a call where the model's batch can be freed, else at its fixed batch (calibration.collect).
    ``held_out``: where method auto scores its candidates (default: split from ``dataset``, calibration/held_out.py;
    min-max for every tensor when the data is too small to hold some out, recorded in ``range_methods``);
    ``classifier``: its whole-model check compares the first output's softmax (calibration/auto_ranges.py)."""
    dataset = check_calibration_data(dataset, source)
    method, auto_record = Method(scheme.method), {}
    if method == Method.AUTO and held_out is None:
        if can_hold_out(dataset):
            split = split_held_out(dataset, scheme.samples, "method auto")
            dataset, held_out = split.fit, split.held_out
        else:
            method, auto_record = Method.MINMAX, {"fallback": f"minmax for every tensor: {len(dataset)} calibration "
                                                  "samples are too few to hold some out"}  # fmt: skip
    dataset = dataset.head(scheme.samples)
    plan = plan_quantization(model, skip=set(scheme.skip_nodes))
    levels = 65536 if scheme.activation_dtype == "int16" else 256
    symmetric = scheme.symmetric_activations or scheme.activation_dtype == "int16"

    softmax = softmax_inputs(model)

    def estimator(name: str):
        chosen = (CandidateEstimator(levels, symmetric, scheme.percentile) if method == Method.AUTO else
                  make_estimator(method, symmetric=symmetric, percentile=scheme.percentile, levels=levels))  # fmt: skip
        chosen = chosen if isinstance(chosen, MinMaxEstimator) else FlagAwareEstimator(chosen)  # minmax: extremes
        return SoftmaxInputEstimator(chosen, softmax[name], levels) if name in softmax else chosen

    estimators = collect_estimators(model, plan.activations, dataset, estimator)
    ranges = {t: e.range() for t, e in estimators.items()}
    if method == Method.AUTO:
        choice = choose_ranges(model, estimators, held_out, scheme.activation_dtype, symmetric)
        choice = pick_plan(model, choice, held_out, lambda r: _qdq_model(model, plan, r, scheme), classifier)
        ranges, auto_record = choice.ranges, choice.record()
    flags = flag_tensors(ranges)  # attention masks: left float in both files
    # Flags get no grid at all (a range reaching -inf has no scale), so they are dropped before parameters are made.
    kept = without_tensors(Calibration(scheme, plan, ranges, {}), set(flags))
    return replace(kept, activations=activation_parameters(kept.plan, ranges, scheme),
                   constants=constant_parameters(model, kept.plan, scheme), kept_float=flags,
                   range_methods=auto_record)  # fmt: skip


def qdq_model(model: onnx.ModelProto, calibration: Calibration) -> onnx.ModelProto:
    """The ONNX QDQ model of ``calibration`` on ``model`` in memory (auto's comparisons)."""
    from edgepack.converters.qdq import build_qdq_model

    return build_qdq_model(model, calibration.plan, calibration.activations,
                           per_channel_weights=calibration.scheme.per_channel_weights,
                           constants=calibration.constants)[0]  # fmt: skip


def _qdq_model(model: onnx.ModelProto, plan: QuantPlan, ranges: dict, scheme: QuantScheme) -> onnx.ModelProto:
    """The ONNX QDQ model of ``ranges`` in memory, as the stage writes it (method auto's whole-model check)."""
    kept = without_tensors(Calibration(scheme, plan, ranges, {}), set(flag_tensors(ranges)))
    return qdq_model(model, replace(kept, activations=activation_parameters(kept.plan, ranges, scheme),
                                    constants=constant_parameters(model, kept.plan, scheme)))  # fmt: skip


def activation_parameters(plan: QuantPlan, ranges: dict, scheme: QuantScheme) -> dict[str, QuantParams]:
    dtype = scheme.activation_dtype
    params = {t: activation_params(*ranges[t], dtype, scheme.symmetric_activations) for t in plan.activations}
    # Fixed grids before shared ones: a Reshape after a Softmax (onnx's opset 13 Softmax adapter writes one) shares
    # the Softmax's fixed grid.
    params |= {t: fixed_output_params(op, dtype) for t, op in plan.fixed.items()}
    params |= {t: params[source] for t, source in plan.shared.items()}
    return params


def constant_parameters(model: onnx.ModelProto, plan: QuantPlan, scheme: QuantScheme) -> dict[str, QuantParams]:
    """16x8: each constant operand of an elementwise op on the symmetric int16 grid over its own values (a scalar is
    exact on it). int8 files leave constants to the TFLite converter, which puts them on an int8 grid of their own,
    and float in ONNX: the difference is under one output step."""
    if scheme.activation_dtype != "int16" or not plan.constants:
        return {}
    values = constant_values(model.graph, set(plan.constants.values()))
    return {name: activation_params(v.min(), v.max(), "int16") for name, v in values.items() if v.size}


def without_tensors(calibration: Calibration, tensors: set[str], weights: set[str] = frozenset()) -> Calibration:
    """The calibration with ``tensors`` (and tensors sharing their grid; and the ``weights``, with their biases)
    left float."""
    plan = calibration.plan
    tensors = set(tensors) | {t for t, source in plan.shared.items() if source in tensors}
    kept = QuantPlan(activations=[t for t in plan.activations if t not in tensors],
                     shared={t: s for t, s in plan.shared.items() if t not in tensors},
                     fixed={t: op for t, op in plan.fixed.items() if t not in tensors},
                     weights=[w for w in plan.weights if w.initializer not in weights],
                     biases=[b for b in plan.biases if b.weight not in weights],
                     constants={t: c for t, c in plan.constants.items() if t not in tensors})  # fmt: skip
    activations = {t: p for t, p in calibration.activations.items() if t not in tensors}
    constants = {c: p for c, p in calibration.constants.items() if c in kept.constants.values()}
    return replace(calibration, plan=kept, activations=activations, constants=constants)
