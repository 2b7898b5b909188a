"""quantize: the float ONNX artifact -> integer ONNX (QDQ) and TFLite artifacts from ONE calibration.

The same parameters go into both files: the QDQ writer stores them, the TFLite lowering hands them to fake-quant
nodes. The stage then runs both files and records how far their outputs are apart, in output quantization steps.

Calibration data is never the evaluation data: the digits example calibrates on its train split; any other
source names its calibration file, so the accuracy reported is on samples the ranges never saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from edgepack.calibration.data_config import DataConfig
from edgepack.calibration.ptq import Calibration, QuantScheme
from edgepack.calibration.sensitivity import AccuracyTarget
from edgepack.core.artifacts import Artifact, Format, Precision
from edgepack.stages.base import StageConfig, StageContext, StageOutput, first_float_onnx
from edgepack.stages.handoffs import QatRanges
from edgepack.stages.quantize_accuracy import (
    EQUALIZED,
    apply_bias_correction,
    apply_smoothing,
    apply_weight_rounding,
    prepare_float_model,
)
from edgepack.stages.quantize_dynamic import dynamic_config_problem, write_dynamic_artifact
from edgepack.stages.quantize_mixed import file_macs, mixed_calibrations
from edgepack.stages.registry import Measurement, register_stage


class QuantizeConfig(StageConfig, QuantScheme):
    stage: Literal["quantize"] = "quantize"
    calibration_data: DataConfig | Path | None = Field(
        None,
        description="What to calibrate on: a .npz path (one array per input), or a data source block "
        "({source: images, path: ..., preprocessing: ...}); default for 'digits' data: its train split.",
    )
    formats: list[Literal["onnx", "tflite"]] = Field(["onnx", "tflite"], description="Which integer files to write.")
    integer_io: bool = Field(
        False, description="TFLite inputs/outputs as integers (the app quantizes with the manifest's scale and zero "
        "point); default float I/O with quantize/dequantize inside the model.")  # fmt: skip
    unsigned_onnx_activations: bool = Field(
        True, description="ONNX int8 activations as uint8 (same grid, zero point + 128): onnxruntime's fast x86 "
                          "kernels are u8s8; set false for s8s8.")  # fmt: skip
    dynamic_int8: bool = Field(
        False, description="ONNX only: int8 weights (per channel) and activations quantized by onnxruntime at run "
        "time (quantize_dynamic), no calibration; for transformers whose static int8 misses the tolerance "
        "(stages/quantize_dynamic.py).")  # fmt: skip
    accuracy_target: AccuracyTarget | None = Field(
        None, description="Mixed precision: rank layers by measured sensitivity and keep the most sensitive ones "
        "high (ONNX int16, TFLite float) until the files' outputs, measured against the float model's on held-out "
        "calibration samples (never the evaluation data), meet this; the decisions and whether the target was met "
        "land in each file's details (calibration/sensitivity.py, calibration/held_out.py).")  # fmt: skip

    @model_validator(mode="after")
    def _dynamic_int8_alone(self) -> QuantizeConfig:
        problem = dynamic_config_problem(self) if self.dynamic_int8 else None
        if problem:
            raise ValueError(problem)
        return self


def float_onnx_and_its_equalized_copy(artifacts: list[Artifact]) -> list[Artifact]:
    """[the first float ONNX model, and the equalized copy an earlier quantize stage made of it, if any]."""
    source = first_float_onnx(artifacts)
    return source + [a for a in artifacts if a.name == EQUALIZED and source and a.parent == source[0].name][:1]


def layer_sqnr(ctx: StageContext, artifact: Artifact) -> list | None:
    """SQNR of every quantized activation of an integer artifact this stage wrote against its float ONNX parent, on
    the verification samples, in the artifact's own runtime (calibration/localise.py); None for the others."""
    import onnx

    from edgepack.calibration.localise import onnx_layer_sqnr, tflite_layer_sqnr
    from edgepack.converters.normalise import normalised_for_quantization

    if artifact.precision not in (Precision.INT8, Precision.INT16X8) or "dynamic_int8" in artifact.details:
        return None  # a dynamic file has no fixed grids to measure
    parent = ctx.lineage(artifact)[0]
    # the graph the stage calibrated: its activations' names are those of the normalised parent
    float_model, size = normalised_for_quantization(onnx.load(str(ctx.artifact_path(parent)))), ctx.batch_size
    # a smoothed tensor is X / s in the file and X in the parent: no figure rather than a wrong one
    smoothed = {site["output"] for site in artifact.details.get("smooth_quant", {}).get("smoothed", [])}
    activations = {t: p for t, p in artifact.details["activations"].items() if t not in smoothed}
    if artifact.format == Format.ONNX:
        quantized = onnx.load(str(ctx.artifact_path(artifact)))
        rows = onnx_layer_sqnr(float_model, quantized, list(activations), ctx.verify_data, size)
        return with_torch_modules(rows, float_model)
    grids = {t: (p["scale"][0], p["zero_point"][0]) for t, p in activations.items()}
    return tflite_layer_sqnr(float_model, ctx.artifact_path(artifact), grids, artifact.inputs, ctx.verify_data, size)


def with_torch_modules(rows: list[dict], model) -> list[dict]:
    """Each ONNX row (a node of ``model``) with the torch module it came from, where the exporter recorded one:
    '12' or 'features.3.conv' reads better than 'node_Conv_29' in a report."""
    modules = {node.name: module for node in model.graph.node if (module := torch_module(node))}
    return [row | {"module": modules[row["layer"]]} if row["layer"] in modules else row for row in rows]


def torch_module(node) -> str | None:
    """The module path in the dynamo exporter's node metadata: name_scopes ['', 'features', '3', 'conv2d'] is
    module 'features.3' (the last scope names the traced call, the first the root module)."""
    import ast

    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    try:
        parts = ast.literal_eval(scopes) if scopes else []
    except (ValueError, SyntaxError):
        return None
    path = ".".join(str(p) for p in parts[1:-1] if p)
    return path or None


LAYER_SQNR = Measurement(layer_sqnr, code=("edgepack.calibration.localise",))


@register_stage("quantize", QuantizeConfig, reads=float_onnx_and_its_equalized_copy,
                measurements={"layer_sqnr": LAYER_SQNR})  # fmt: skip
def run_quantize(config: QuantizeConfig, inputs: list[Artifact], ctx: StageContext) -> StageOutput:
    import onnx

    from edgepack.calibration.ptq import calibrate

    source, equalized = inputs[0], (inputs[1:] or [None])[0]
    if config.dynamic_int8:
        return StageOutput([write_dynamic_artifact(config, ctx, source)])
    if "tflite" in config.formats and config.precision == Precision.INT16X8:
        from edgepack.converters.onnx_to_tflite import check_16x8_kernels

        check_16x8_kernels(ctx.artifact_path(source))  # before anything is written
    started = time.perf_counter()
    model = onnx.load(str(ctx.artifact_path(source)))
    prepared = prepare_float_model(config, ctx, source, model, equalized)  # cross-layer equalization
    calibration = trained_calibration(ctx, source, prepared.model, config)  # the ranges a qat stage trained, if any
    split = None
    if calibration is None or config.accuracy_target is not None:
        dataset, description = ctx.stage_data(config.calibration_data, stage="quantize", key="calibration_data")
        split = _held_out_part(config, dataset, description)
    if calibration is None:
        fit = dataset if split is None else split.fit  # held-out samples never set a range or a bias
        held_out, classifier = split and split.held_out, ctx.task == "classification"
        apply_smoothing(config, prepared, fit)
        apply_weight_rounding(config, prepared, fit)
        calibration = calibrate(prepared.model, fit, config, description, held_out=held_out, classifier=classifier)
        calibration = apply_bias_correction(config, prepared, calibration, fit, ctx.batch_size, held_out, classifier)
        prepared.details["calibration_samples"] = {"fitted": min(len(fit), config.samples),
                                                   "held_out": 0 if held_out is None else len(held_out)}  # fmt: skip
    seconds = time.perf_counter() - started
    mixed = mixed_calibrations(config, ctx, prepared.model_for(set()), calibration, prepared.source.name,
                               prepared.model_for, split)  # fmt: skip
    plans = {"onnx": mixed.onnx} | ({"tflite": mixed.tflite} if "tflite" in config.formats else {})
    files = {fmt: _integer_file(config, ctx, prepared, plan, fmt) for fmt, plan in plans.items()}  # before writing
    written = [_write_onnx(config, ctx, prepared.source, files["onnx"].model, mixed.onnx, seconds)]
    if "tflite" in config.formats:
        with prepared.model_file(ctx, files["tflite"].model) as float_path:
            written.append(_write_tflite(config, ctx, prepared.source, files["tflite"].model, mixed.tflite, written[0],
                                         float_path))  # fmt: skip
    for artifact in written:
        artifact.details.update(files[str(artifact.format)].details)
    mixed.record(ctx, written)
    if "onnx" not in config.formats:
        ctx.artifact_path(written[0]).unlink()  # written only for the agreement figure of the TFLite file
        written = written[1:]
    prepared.record(written)
    return StageOutput(prepared.artifacts + written)


def _held_out_part(config: QuantizeConfig, dataset, description: str):
    """The calibration samples held out from fitting ranges and biases, on which the mixed-precision search measures
    its plans and ``auto`` (ranges, bias correction) its choices; never the evaluation data. None when nothing asks
    for it, or when only an ``auto`` does and the data is too small (it falls back, and says so)."""
    from edgepack.calibration.collect import check_calibration_data
    from edgepack.calibration.estimators import Method
    from edgepack.calibration.held_out import can_hold_out, split_held_out

    if config.accuracy_target is not None:
        return split_held_out(check_calibration_data(dataset, "calibration data"), config.samples, "accuracy_target")
    deciding_bias = config.bias_correction == "auto" and config.weight_rounding == "nearest"  # else nothing to decide
    if Method(config.method) != Method.AUTO and not deciding_bias:
        return None  # a method set by the user fits on all the calibration samples
    dataset = check_calibration_data(dataset, description)
    return split_held_out(dataset, config.samples, "method auto") if can_hold_out(dataset) else None


@dataclass
class IntegerFile:
    model: object  # the onnx.ModelProto it is written from: bias-corrected where its weights are int8
    details: dict  # its MACs by precision, and which biases were corrected


def _integer_file(config: QuantizeConfig, ctx, prepared, calibration: Calibration, fmt: str) -> IntegerFile:
    """Checked before anything is written: the file must run most of its MACs at its own precision."""
    from edgepack.calibration.precision import integer_nodes

    name = f"{fmt}-{config.precision}"
    shipped = fmt in config.formats  # the ONNX file of a TFLite-only stage is only written for the agreement figure
    details = {"macs": file_macs(ctx, prepared.model, calibration, name, shipped)}
    integer = integer_nodes(prepared.model, calibration)
    return IntegerFile(prepared.model_for(integer), details | prepared.correction_details(integer))


def _write_onnx(config: QuantizeConfig, ctx, source: Artifact, model, calibration: Calibration, seconds: float):
    from edgepack.converters.onnx_info import onnx_artifact
    from edgepack.converters.qdq import write_qdq_model

    precision = Precision(config.precision)
    out = ctx.artifact_file(precision, ".onnx")
    weights = write_qdq_model(model, out, calibration.plan, calibration.activations,
                              unsigned_activations=config.unsigned_onnx_activations,
                              per_channel_weights=config.per_channel_weights,
                              constants=calibration.constants)  # fmt: skip
    artifact = onnx_artifact(ctx.run_dir, out, name=f"onnx-{precision}", stage="quantize", parent=source.name,
                             precision=precision)  # fmt: skip
    artifact.details.update(quantization_details(calibration, weights, seconds))
    return artifact


def _write_tflite(config: QuantizeConfig, ctx, source: Artifact, model, calibration: Calibration,
                  onnx_twin: Artifact, float_path: Path):  # fmt: skip
    """``model``: the float ONNX model (bias-corrected where this file's layers run int8) whose weights and biases
    the file holds, as the same integers as the ONNX file."""
    from edgepack.calibration.precision import integer_nodes
    from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite, tflite_artifact
    from edgepack.converters.qdq import dequantized_constants

    precision = Precision(config.precision)
    out = ctx.artifact_file(precision, ".tflite")
    ranges = calibration.fake_quant_ranges()
    bits = 16 if precision == Precision.INT16X8 else 8
    shapes = {i.name: i.shape for i in ctx.model.inputs}
    # Only the layers this file runs integer get edgepack's integers: a layer kept float keeps its float weights.
    plan = calibration.plan.for_nodes(integer_nodes(model, calibration))
    constants = dequantized_constants(model.graph, plan, calibration.activations, config.per_channel_weights)
    quantization = FakeQuantization(ranges, bits, config.integer_io, config.per_channel_weights, constants)
    conversion = convert_onnx_to_tflite(float_path, out, input_shapes=shapes, quantization=quantization)
    return tflite_artifact(
        ctx.run_dir,
        out,
        conversion,
        name=f"tflite-{precision}",
        precision=precision,
        parent=source.name,
        stage="quantize",
        same_calibration_as=onnx_twin.name,
        activations={t: _params_json(p) for t, p in calibration.activations.items()},  # a float layer has none
        agreement_with_onnx=output_agreement(ctx, onnx_twin, out, calibration),
    )


def output_agreement(ctx: StageContext, onnx_twin: Artifact, tflite_path: Path, calibration: Calibration) -> dict:
    """How far the TFLite outputs are from the ONNX ones, in units of each output's quantization step, and under
    ``layers`` where the two files part (calibration/agreement.py: first differing activation, where disagreement
    starts afresh, worst layers), measured on the first LAYER_SAMPLES verification samples."""
    import onnx

    from edgepack.calibration.agreement import divergence_summary, layer_agreement
    from edgepack.converters.runtime import open_session
    from edgepack.converters.verify import predict

    size, onnx_path, tflite = ctx.batch_size, ctx.artifact_path(onnx_twin), open_session(tflite_path)
    onnx_out = predict(open_session(onnx_path), ctx.verify_data, size)
    tflite_out = predict(tflite, ctx.verify_data, size)
    layers = layer_agreement(onnx_path, tflite_path, calibration.activations, tflite.inputs,
                             ctx.verify_data.head(LAYER_SAMPLES), size)  # fmt: skip
    graph, layer_samples = onnx.load(str(onnx_path)).graph, min(LAYER_SAMPLES, len(ctx.verify_data))
    figures = {}
    for name, values in onnx_out.items():
        step = float(np.max(calibration.activations[name].scale)) if name in calibration.activations else None
        steps = np.abs(values - tflite_out[name]) / step if step else np.full(values.shape, np.nan)
        figures[name] = {"output_step": step, "within_one_step": float(np.mean(steps <= 1.0 + 1e-3)),
                         "max_steps": float(np.max(steps)), "samples": len(ctx.verify_data),
                         "layers": divergence_summary(layers, graph, name) | {"samples": layer_samples}}  # fmt: skip
    return figures


LAYER_SAMPLES = 16  # enough to find where the files part; each sample runs both files with every activation exposed


def quantization_details(calibration: Calibration, weights: dict, seconds: float) -> dict:
    """What was decided, for results.json: every activation's and weight's scale and zero point."""
    return {
        "scheme": calibration.scheme.model_dump(mode="json", include=set(QuantScheme.model_fields)),
        "calibration_seconds": round(seconds, 3),
        "activations": {t: _params_json(p) for t, p in calibration.activations.items()},
        "weights": {t: _params_json(p) for t, p in weights.items()},
        "calibrated_ranges": {t: [float(lo), float(hi)] for t, (lo, hi) in calibration.ranges.items()},
        "kept_float": calibration.kept_float,  # tensors calibration left float (attention masks), and why
    } | ({"range_methods": calibration.range_methods} if calibration.range_methods else {})  # method auto


def _params_json(params) -> dict:
    return {"scale": np.atleast_1d(params.scale).astype(float).tolist(), "dtype": params.dtype,
            "zero_point": np.atleast_1d(params.zero_point).astype(int).tolist(), "axis": params.axis}  # fmt: skip


def trained_calibration(ctx: StageContext, source: Artifact, model, scheme: QuantScheme) -> Calibration | None:
    """The ranges a qat stage handed on when ``source`` (a float ONNX) was exported from its model; None otherwise."""
    from edgepack.calibration.plan import plan_quantization
    from edgepack.calibration.ptq import activation_parameters
    from edgepack.core.errors import RecipeError, StageError

    exported_from = next((a for a in ctx.lineage(source) if a.format == Format.TORCH), None)
    trained = ctx.handoff(QatRanges, exported_from) if exported_from is not None else None
    if trained is None:
        return None
    changed = [k for k in ("cross_layer_equalization", "smooth_quant") if getattr(scheme, k)]
    changed += ["bias_correction: true"] if scheme.bias_correction is True else []  # auto: nothing to choose here
    changed += [] if scheme.per_channel_weights else ["per_channel_weights: false"]
    rounding = scheme.weight_rounding if "weight_rounding" in scheme.model_fields_set else "nearest"  # QAT's own
    changed += [] if rounding == "nearest" else [f"weight_rounding: {rounding}"]
    if changed:
        raise RecipeError(f"the quantize stage after qat writes the trained scheme (per-channel weights, the trained "
                          f"ranges); remove {changed} from it")  # fmt: skip
    if trained.scheme["precision"] != scheme.precision:
        raise RecipeError(
            f"the qat stage trained {trained.scheme['precision']} but the quantize stage asks for "
            f"{scheme.precision}; set the same precision in both"
        )
    plan = plan_quantization(model, skip=set(scheme.skip_nodes))
    missing = [t for t in plan.activations if t not in trained.ranges]
    if missing:
        raise StageError(
            "quantize",
            f"{source.name} has quantized tensors {missing[:5]} that QAT never trained; "
            "export with the same settings the qat stage used (its export ran with the recipe's export "
            "stage settings)",
        )
    trained_scheme = QuantScheme.model_validate(trained.scheme)
    ranges = {t: tuple(trained.ranges[t]) for t in plan.activations}
    return Calibration(trained_scheme, plan, ranges, activation_parameters(plan, ranges, trained_scheme))
