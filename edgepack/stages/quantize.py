"""quantize: the float ONNX artifact -> integer artifacts from ONE calibration (ONNX QDQ; TFLite once lowered).

Calibration data is never the evaluation data: the digits example calibrates on its train split; any other
source names its calibration file, so the accuracy reported is on samples the ranges never saw.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from calibration.ptq import Calibration, QuantScheme
from edgepack.artifacts import Artifact, Format, Precision
from edgepack.errors import DataError
from edgepack.stages.base import StageConfig
from edgepack.stages.registry import register_stage


class QuantizeConfig(StageConfig, QuantScheme):
    stage: Literal["quantize"] = "quantize"
    calibration_data: Path | None = Field(
        None, description=".npz (one array per input) to calibrate on; default for 'digits' data: its train split."
    )
    unsigned_onnx_activations: bool = Field(
        True, description="ONNX int8 activations as uint8 (same grid, zero point + 128): onnxruntime's fast x86 "
                          "kernels are u8s8; set false for s8s8.")  # fmt: skip


@register_stage("quantize", QuantizeConfig)
def run_quantize(config: QuantizeConfig, ctx) -> list[Artifact]:
    """Reads the first float ONNX artifact."""
    import onnx

    from calibration.ptq import calibrate
    from edgepack.measure import batch_size

    source = next(a for a in ctx.artifacts if a.format == Format.ONNX and a.precision == Precision.FP32)
    dataset, description = calibration_dataset(config, ctx)
    started = time.perf_counter()
    calibration = calibrate(onnx.load(str(ctx.artifact_path(source))), dataset, config, batch_size(ctx.recipe),
                            description)  # fmt: skip
    seconds = time.perf_counter() - started
    return [_write_onnx(config, ctx, source, calibration, seconds)]


def calibration_dataset(config: QuantizeConfig, ctx):
    from calibration.sources import check_dataset, load_digits_dataset, load_npz_dataset

    inputs = ctx.recipe.model.inputs
    if config.calibration_data is not None:
        dataset = load_npz_dataset(config.calibration_data, [i.name for i in inputs])
        description = str(config.calibration_data)
    elif ctx.recipe.data is not None and ctx.recipe.data.source == "digits":
        dataset, description = load_digits_dataset(inputs[0].name, split="train"), "digits (train split)"
    else:
        raise DataError(
            "the quantize stage needs 'calibration_data' (a .npz with one array per input), separate from the "
            "evaluation data so that accuracy is measured on samples calibration never saw"
        )
    check_dataset(dataset, {i.name: i.shape for i in inputs}, {i.name: i.dtype for i in inputs}, description)
    return dataset, description


def _write_onnx(config: QuantizeConfig, ctx, source: Artifact, calibration: Calibration, seconds: float) -> Artifact:
    import onnx

    from converters.onnx_info import onnx_artifact
    from converters.qdq import write_qdq_model

    precision = Precision(config.precision)
    out = ctx.artifact_path(source).with_name(f"{ctx.recipe.name}.{precision}.onnx")
    model = onnx.load(str(ctx.artifact_path(source)))
    weights = write_qdq_model(model, out, calibration.plan, calibration.activations,
                              unsigned_activations=config.unsigned_onnx_activations)  # fmt: skip
    artifact = onnx_artifact(ctx.run_dir, out, name=f"onnx-{precision}", stage="quantize", parent=source.name,
                             precision=precision)  # fmt: skip
    artifact.details.update(quantization_details(calibration, weights, seconds))
    return artifact


def quantization_details(calibration: Calibration, weights: dict, seconds: float) -> dict:
    """What was decided, for results.json: every activation's and weight's scale and zero point."""
    return {
        "scheme": calibration.scheme.model_dump(mode="json", include=set(QuantScheme.model_fields)),
        "calibration_seconds": round(seconds, 3),
        "activations": {t: _params_json(p) for t, p in calibration.activations.items()},
        "weights": {t: _params_json(p) for t, p in weights.items()},
        "calibrated_ranges": {t: [float(lo), float(hi)] for t, (lo, hi) in calibration.ranges.items()},
    }


def _params_json(params) -> dict:
    return {"scale": np.atleast_1d(params.scale).astype(float).tolist(), "dtype": params.dtype,
            "zero_point": np.atleast_1d(params.zero_point).astype(int).tolist(), "axis": params.axis}  # fmt: skip
