"""The quantize stage's mixed precision: with ``accuracy_target``, the most sensitive layers are kept high
(calibration/sensitivity.py), with the same per-layer decisions in both files.

ONNX holds a kept layer at int16 QDQ (float when the scheme is already int16x8); a TFLite file cannot mix int8 and
int16, so there the layer is float: its output tensor gets no fake-quant, the ops reading it run in float, and the
island is bounded by DEQUANTIZE/QUANTIZE on tensors that keep edgepack's calibrated grids. After conversion every
integer grid in the .tflite is checked against edgepack's: one the converter chose itself fails the stage.

A plan is written only when its files keep their name: at least half of each file's MACs at its own precision
(calibration/precision.py). When no such plan meets the target the stage stops before writing, naming the best
figure reached and by which plan, unless ``accuracy_target.best_effort`` asks for the best such plan instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from edgepack.calibration.held_out import CalibrationSplit
from edgepack.calibration.precision import (
    MIN_OWN_PRECISION_MACS,
    PRECISIONS,
    carries_its_name,
    mac_fractions,
    node_macs,
    node_precisions,
    own_precision,
)
from edgepack.calibration.ptq import Calibration
from edgepack.calibration.sensitivity import (
    MixedPrecision,
    RuntimeScorer,
    file_plans,
    mixed_precision_record,
    plan_layers,
    search_mixed_precision,
    sensitivity_record,
    settle_plan,
)
from edgepack.core.artifacts import Artifact, Format
from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import QuantizationError, StageError


@dataclass
class MixedCalibrations:
    """What each file is written from: the one calibration, with the kept layers high (or untouched)."""

    onnx: Calibration
    tflite: Calibration
    search: MixedPrecision | None = None
    scorer: RuntimeScorer | None = None
    source: str | None = None  # the float artifact searched on

    def record(self, ctx, written: list[Artifact]) -> None:
        """Check every TFLite file's integer grids are edgepack's (mixed or not: skip_nodes leaves float tensors
        too); with a search, put the decisions in each artifact's details, the TFLite file's drop measured."""
        for artifact in written:
            if artifact.format == Format.TFLITE:
                check_tflite_grids(ctx.artifact_path(artifact), self.tflite, artifact.name)
            if self.search is None:
                continue
            if artifact.format == Format.ONNX:
                artifact.details["mixed_precision"] = mixed_precision_record(self.search, "onnx")
            else:
                measured = self.scorer.score_outputs(tflite_outputs(ctx, ctx.artifact_path(artifact), self.scorer))
                artifact.details["mixed_precision"] = mixed_precision_record(self.search, "tflite", measured)
            artifact.details["sensitivity"] = sensitivity_record(self.search, self.source)  # how it was decided


def mixed_calibrations(config, ctx, model: onnx.ModelProto, calibration: Calibration, source: str,
                       written_from: Callable[[set[str]], onnx.ModelProto] | None = None,
                       split: CalibrationSplit | None = None) -> MixedCalibrations:  # fmt: skip
    """Search only when the stage has an ``accuracy_target``, on ``split.held_out``: calibration samples the ranges
    were not fitted on, never the evaluation data. The target is stated against the float model: for a classifier
    the share of samples whose top-1 class differs from the float model's, else the output SQNR. The reference is
    ``model``, the float model (neither rounded by gptq/adaround nor bias-corrected); each candidate is built from
    ``written_from(its integer layers)``, as its file will be (FloatPreparation.model_for)."""

    if config.accuracy_target is None:
        return MixedCalibrations(calibration, calibration)
    held_out = split.held_out
    dataset = ArrayDataset(held_out.head(config.accuracy_target.samples or len(held_out)).inputs)  # labels unused
    options = {"unsigned_activations": config.unsigned_onnx_activations,
               "per_channel_weights": config.per_channel_weights}  # fmt: skip
    scorer = RuntimeScorer(model, dataset, **options, written_from=written_from,
                           top1_of_float=ctx.task == "classification")  # fmt: skip
    search = search_mixed_precision(calibration, scorer, config.accuracy_target)
    search = settle_plan(search, calibration, model, scorer.macs, list(config.formats))  # or raise, before writing
    plans = file_plans(calibration, plan_layers(model, calibration.plan), search.kept, search.high)
    return MixedCalibrations(plans.onnx, plans.tflite, search, scorer, source)


def file_macs(ctx, model: onnx.ModelProto, calibration: Calibration, name: str, shipped: bool = True) -> dict:
    """The file's MACs by precision (details.macs); a ``shipped`` file that would run under half of them at its own
    precision is refused by name, before it is written: it would be a float file called integer."""
    shapes = {i.name: i.shape for i in ctx.model.inputs}
    fractions = mac_fractions(node_macs(model, shapes), node_precisions(model, calibration))
    own = own_precision(calibration.scheme.activation_dtype)
    if carries_its_name(fractions[own]) or not shipped:
        return fractions
    others = ", ".join(f"{fractions[p]:.0%} {p}" for p in PRECISIONS if p != own)
    raise QuantizationError(
        f"{name} would run {fractions[own]:.0%} of its {fractions['total']:,} MACs in {own} ({others}): a file "
        f"named {calibration.scheme.precision} runs at least {MIN_OWN_PRECISION_MACS:.0%} of them in {own}; keep "
        "fewer nodes float (skip_nodes), or ship the float file; nothing was written"
    )


def check_tflite_grids(path, calibration: Calibration, artifact: str) -> None:
    from edgepack.converters.onnx_to_tflite import foreign_activation_grids

    grids = {(float(p.scale), int(p.zero_point)) for p in calibration.activations.values()}
    foreign = foreign_activation_grids(path, grids)
    if foreign:
        raise StageError("quantize", f"{artifact}: the TFLite converter chose its own grid for {', '.join(foreign)} "
                         "next to a float tensor (skip_nodes or accuracy_target); keep fewer layers float, or "
                         "write this precision for ONNX only (formats: [onnx])")  # fmt: skip


def tflite_outputs(ctx, path, scorer: RuntimeScorer) -> dict:
    from edgepack.converters.runtime import open_session
    from edgepack.converters.verify import predict

    return predict(open_session(path), scorer.dataset, ctx.batch_size)
