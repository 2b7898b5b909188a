"""export: the torch model -> ONNX float32, checked by the ONNX checker, run in onnxruntime by verification."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from edgepack.core.artifacts import Artifact
from edgepack.stages.base import StageConfig, StageContext, StageOutput, latest_torch
from edgepack.stages.registry import register_stage


class Exporter(StrEnum):
    DYNAMO = "dynamo"
    LEGACY = "legacy"


class ExportConfig(StageConfig):
    stage: Literal["export"] = "export"
    opset: int = Field(18, ge=13, le=23, description="ONNX opset; the dynamo exporter needs 18 or newer.")
    exporter: Exporter = Field(
        Exporter.DYNAMO,
        description="'dynamo' (torch.export based) or 'legacy' (TorchScript based; TorchScript sources always use it). "
        "A qat stage exports with these settings too, so its ranges are named as this export names tensors.",
    )


@register_stage("export", ExportConfig, reads=latest_torch)
def run_export(config: ExportConfig, inputs: list[Artifact], ctx: StageContext) -> StageOutput:
    """The latest torch model (the source, or what a compression stage made of it); an ONNX source needs no export
    and passes through (the selector finds no torch model)."""
    from edgepack.converters.onnx_info import onnx_artifact

    if not inputs:
        return StageOutput([])
    (source,) = inputs
    out = ctx.artifact_file("fp32", ".onnx")
    dynamo = ctx.export_onnx(source, out)
    artifact = onnx_artifact(ctx.run_dir, out, name="onnx-fp32", stage="export", parent=source.name)
    artifact.details.update(exporter="dynamo" if dynamo else "legacy")
    return StageOutput([artifact])
