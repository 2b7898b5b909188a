"""The quantize stage's accuracy tools: cross-layer equalization before calibration, bias correction after.

Equalization keeps the float model's function, so its result is a float ONNX artifact of its own
(``onnx-fp32-equalized``), verified against the reference like any float file, and the integer files name it as
their parent. Bias correction deliberately moves the float model (towards what the integer one computes), so its
model is only the input of the two integer writers, never an artifact; each file gets the correction of the layers
whose int8 weights run in an integer kernel in it (int8 or 16x8), a layer that runs float there keeps its float bias.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from edgepack.core.artifacts import Artifact

if TYPE_CHECKING:
    from edgepack.calibration.bias_correction import BiasCorrection


@dataclass
class FloatPreparation:
    """The float model the integer files are written from, and what was done to it."""

    source: Artifact  # the integer files' parent: the equalized artifact when equalization changed the model
    model: onnx.ModelProto  # what calibration reads: equalized, weights rounded by gptq/adaround, never bias-corrected
    artifacts: list[Artifact] = field(default_factory=list)  # written here, returned before the integer files
    details: dict = field(default_factory=dict)  # for the integer artifacts' details
    correction: BiasCorrection | None = None
    source_holds_model: bool = True  # False when ``model`` is not the source file's graph (normalised, Pads folded)
    unrounded: dict[str, onnx.TensorProto] = field(default_factory=dict)  # node -> its weight before gptq/adaround

    def model_for(self, integer_nodes: set[str]) -> onnx.ModelProto:
        """What one integer file is written from: bias-corrected at the nodes with int8 weights in it, there only;
        a layer that runs float in it (mixed precision) gets its weight back from before gptq/adaround rounded it."""
        model = self.model if self.correction is None else self.correction.only(integer_nodes).model
        restored = {t.name: t for node, t in self.unrounded.items() if node not in integer_nodes}
        if not restored:
            return model
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for tensor in copy.graph.initializer:
            if tensor.name in restored:
                tensor.CopyFrom(restored[tensor.name])
        return copy

    def correction_details(self, integer_nodes: set[str]) -> dict:
        """For one file's details: the layers corrected in it, and those that kept their float bias (run float)."""
        if self.correction is None:
            return {}
        kept = [n for n in self.correction.corrections if n not in integer_nodes]
        return {"bias_correction": self.correction.only(integer_nodes).summary() | {"float_bias_kept": kept}}

    @contextmanager
    def model_file(self, ctx, model: onnx.ModelProto) -> Iterator[Path]:
        """A file holding ``model`` for the TFLite converter, which reads ONNX from disk."""
        if model is self.model and self.source_holds_model:
            yield ctx.artifact_path(self.source)
            return
        with tempfile.TemporaryDirectory(prefix="edgepack-float-") as folder:
            path = Path(folder) / "float.onnx"
            onnx.save(model, str(path))
            yield path

    def record(self, integer_artifacts: list[Artifact]) -> None:
        for artifact in integer_artifacts:
            artifact.details.update(self.details)


EQUALIZED = "onnx-fp32-equalized"


def prepare_float_model(config, ctx, source: Artifact, model: onnx.ModelProto,
                        earlier: Artifact | None = None) -> FloatPreparation:  # fmt: skip
    """Normalise a graph edgepack did not write (converters/normalise.py), so calibration and both writers read the
    same tensors; fold explicit Pads; equalize when the scheme asks (the equalized model is written, described and
    returned as an artifact, or ``earlier``, the file an earlier quantize stage wrote of the same source, is reused)."""
    from edgepack.converters.normalise import normalised_for_quantization

    normalised = normalised_for_quantization(model)
    prepared = _with_pads_folded(FloatPreparation(source, normalised, source_holds_model=normalised is model))
    if not config.cross_layer_equalization:
        return prepared
    from edgepack.calibration.equalize import equalize_model

    equalization = equalize_model(prepared.model)
    prepared.details["cross_layer_equalization"] = equalization.summary()
    if not equalization.pairs:
        return prepared
    prepared.model, prepared.source_holds_model = equalization.model, True
    prepared.source = earlier or _equalized_artifact(ctx, source, equalization.model, prepared.details)
    prepared.artifacts += [] if earlier else [prepared.source]  # a second quantize stage reuses the first's file
    return prepared


def _with_pads_folded(prepared: FloatPreparation) -> FloatPreparation:
    """Pads folded into the Conv/pool reading them (calibration/fold_pads.py), always: the function is the same to
    the last bit, and a quantization point on a Pad output leaves DQ/Q pairs onnxruntime cannot fuse. No artifact
    is written for it: the source computes the same, so it stays the integer files' parent."""
    from edgepack.calibration.fold_pads import fold_pads

    folding = fold_pads(prepared.model)
    if folding.folded:
        prepared.model, prepared.source_holds_model = folding.model, False
        prepared.details["pad_folding"] = folding.summary()
    return prepared


def _equalized_artifact(ctx, source: Artifact, model: onnx.ModelProto, details: dict) -> Artifact:
    from edgepack.converters.onnx_info import onnx_artifact
    from edgepack.core.artifacts import atomic_path

    out = ctx.artifact_file("fp32-equalized", ".onnx")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    artifact = onnx_artifact(ctx.run_dir, out, name=EQUALIZED, stage="quantize", parent=source.name)
    artifact.details["cross_layer_equalization"] = details["cross_layer_equalization"]
    return artifact


def apply_smoothing(config, prepared: FloatPreparation, dataset) -> None:
    """SmoothQuant when the scheme asks: the smoothed model computes what the source does, so, like pad folding, it
    is no artifact of its own; what was smoothed (and what was not, and why) goes into the integer files' details."""
    if config.smooth_quant is None:
        return
    from edgepack.calibration.smoothing import smooth_quant

    smoothing = smooth_quant(prepared.model, dataset.head(config.samples), config.smooth_quant.alpha)
    prepared.details["smooth_quant"] = smoothing.summary()
    if smoothing.smoothed:
        prepared.model, prepared.source_holds_model = smoothing.model, False


def apply_weight_rounding(config, prepared: FloatPreparation, dataset) -> None:
    """GPTQ or AdaRound when the scheme asks: the weights are put on their int8 grid as computed, so calibration
    and both writers read those exact integers (their scales unchanged); the cost goes into the details."""
    if config.weight_rounding == "nearest":
        return
    from edgepack.calibration.plan import plan_quantization

    plan = plan_quantization(prepared.model, skip=set(config.skip_nodes))
    if config.weight_rounding == "gptq":
        from edgepack.calibration.gptq import gptq_model as rounder
    else:
        from edgepack.calibration.adaround import adaround_model as rounder
    rounding = rounder(prepared.model, plan, dataset.head(config.samples), per_channel=config.per_channel_weights)
    prepared.details[config.weight_rounding] = rounding.summary()
    originals = {t.name: t for t in prepared.model.graph.initializer}
    prepared.unrounded = {w.node: originals[w.initializer] for w in plan.weights}
    prepared.model, prepared.source_holds_model = rounding.model, False


def apply_bias_correction(config, prepared: FloatPreparation, calibration, dataset, batch_size: int, held_out=None,
                          classifier: bool = False):  # fmt: skip
    """Measure the bias correction of every quantized Conv/Gemm when the scheme asks (each file applies it where its
    layers keep int8 weights: ``model_for``); returns the calibration planned on the corrected graph. ``auto`` keeps
    it only where it brings the whole model closer to float on the ``held_out`` samples: it helps where int8 weights
    shift a layer's mean output and hurts where the calibration data's means do not carry over (measured both ways
    on real mobile nets, see benchmarks/int8_defaults.py)."""
    if config.bias_correction is False:
        return calibration
    if config.bias_correction == "auto" and config.weight_rounding != "nearest":
        prepared.details["bias_correction_choice"] = {"applied": False, "why": f"the weights were rounded by "
            f"{config.weight_rounding}, which minimises each layer's output error, mean included"}  # fmt: skip
        return calibration
    if config.bias_correction == "auto" and held_out is None:
        prepared.details["bias_correction_choice"] = {"applied": False, "why": "too few calibration samples to hold "
                                                      "some out for the comparison"}  # fmt: skip
        return calibration
    from edgepack.calibration.bias_correction import correct_biases, with_corrected_model

    correction = correct_biases(prepared.model, calibration.plan, dataset.head(config.samples), batch_size,
                                per_channel_weights=config.per_channel_weights)  # fmt: skip
    corrected = with_corrected_model(calibration, correction.model)
    if config.bias_correction == "auto" and not _correction_helps(prepared, calibration, corrected, correction,
                                                                   held_out, classifier):  # fmt: skip
        return calibration
    prepared.correction = correction
    return corrected


def _correction_helps(prepared: FloatPreparation, calibration, corrected, correction, held_out, classifier) -> bool:
    from edgepack.calibration.auto_ranges import END_TO_END_SAMPLES, held_out_errors
    from edgepack.calibration.ptq import qdq_model

    if not correction.corrections:
        prepared.details["bias_correction_choice"] = {"applied": False, "why": "no quantized Conv/Gemm to correct"}
        return False
    errors = held_out_errors(prepared.model, {"without": lambda: qdq_model(prepared.model, calibration),
                                              "with": lambda: qdq_model(correction.model, corrected)},
                             held_out, classifier)  # fmt: skip
    applied = errors["with"] < errors["without"]
    prepared.details["bias_correction_choice"] = {
        "applied": applied, "held_out_error": {k: float(f"{v:.4g}") for k, v in errors.items()},
        "measured_on": f"{min(len(held_out), END_TO_END_SAMPLES)} held-out calibration samples, "
                       + ("softmax KL to float" if classifier else "relative squared error to float")}  # fmt: skip
    return applied
