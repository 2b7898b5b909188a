"""export: the torch model -> ONNX float32, checked by the ONNX checker, run in onnxruntime by verification."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from edgepack.artifacts import Artifact, Format
from edgepack.stages.base import StageConfig
from edgepack.stages.registry import register_stage


class Exporter(StrEnum):
    DYNAMO = "dynamo"
    LEGACY = "legacy"


class ExportConfig(StageConfig):
    stage: Literal["export"] = "export"
    opset: int = Field(18, ge=13, le=23, description="ONNX opset; the dynamo exporter needs 18 or newer.")
    exporter: Exporter = Field(
        Exporter.DYNAMO,
        description="'dynamo' (torch.export based) or 'legacy' (TorchScript based; TorchScript sources always use it).",
    )


@register_stage("export", ExportConfig)
def run_export(config: ExportConfig, ctx) -> list[Artifact]:
    """Reads the torch source; an ONNX source needs no export and passes through."""
    from converters.onnx_info import onnx_artifact
    from converters.torch_to_onnx import example_inputs, export_to_onnx
    from edgepack.recipe import ModelFormat

    source = ctx.artifacts[0]
    if source.format != Format.TORCH:
        return []
    recipe, loaded = ctx.recipe, ctx.loaded
    # torch.export programs go to the dynamo exporter as they are; TorchScript only exports the legacy way.
    dynamo = config.exporter == Exporter.DYNAMO and loaded.format != ModelFormat.TORCHSCRIPT
    model = loaded.exported_program if loaded.exported_program is not None else loaded.module
    out = ctx.run_dir / "artifacts" / f"{recipe.name}.fp32.onnx"
    example = example_inputs(_example_feeds(ctx), [i.name for i in recipe.model.inputs])
    export_to_onnx(
        model,
        example,
        out,
        input_names=[i.name for i in recipe.model.inputs],
        output_names=recipe.model.output_names,
        opset=config.opset if dynamo else min(config.opset, 17),
        dynamo=dynamo,
    )
    artifact = onnx_artifact(ctx.run_dir, out, name="onnx-fp32", stage="export", parent=source.name)
    artifact.details.update(exporter="dynamo" if dynamo else "legacy")
    return [artifact]


def _example_feeds(ctx) -> dict:
    """One batch of real samples at the recipe's batch size (exporters trace with it)."""
    from calibration.sources import ArrayDataset
    from converters.verify import pad_batch

    batch = ctx.recipe.model.inputs[0].shape[0]
    first: ArrayDataset = ctx.verify_data
    return pad_batch(next(first.batches(batch)), batch)
