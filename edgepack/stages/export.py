"""export: the torch model -> ONNX float32, checked by the ONNX checker, run in onnxruntime by verification."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepack.core.artifacts import Artifact, Format
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
    """Reads the latest torch model (the source, or what a compression stage made of it); an ONNX source needs no
    export and passes through."""
    from converters.onnx_info import onnx_artifact
    from edgepack.running.torch_artifacts import latest_torch_artifact, module_of

    if ctx.artifacts[0].format != Format.TORCH:
        return []
    source = latest_torch_artifact(ctx)
    loaded = ctx.loaded
    as_loaded = source.stage == "load" and loaded.exported_program is not None
    model = loaded.exported_program if as_loaded else module_of(ctx, source)
    out = ctx.run_dir / "artifacts" / f"{ctx.recipe.name}.fp32.onnx"
    dynamo = export_module(ctx, model, out, config)
    artifact = onnx_artifact(ctx.run_dir, out, name="onnx-fp32", stage="export", parent=source.name)
    artifact.details.update(exporter="dynamo" if dynamo else "legacy")
    return [artifact]


def export_module(ctx, model, out: Path, config: ExportConfig | None = None) -> bool:
    """Export with the recipe's export settings (the export stage's, else its defaults); returns whether the dynamo
    exporter was used. QAT exports with the same settings, so its tensor names are the export stage's."""
    from converters.torch_to_onnx import example_inputs, export_to_onnx
    from edgepack.recipe import ModelFormat

    recipe = ctx.recipe
    config = config or next((s for s in recipe.stages if s.stage == "export"), ExportConfig())
    # torch.export programs go to the dynamo exporter as they are; TorchScript only exports the legacy way.
    dynamo = config.exporter == Exporter.DYNAMO and ctx.loaded.format != ModelFormat.TORCHSCRIPT
    names = [i.name for i in recipe.model.inputs]
    export_to_onnx(model, example_inputs(example_feeds(ctx), names), out, input_names=names,
                   output_names=recipe.model.output_names, opset=config.opset if dynamo else min(config.opset, 17),
                   dynamo=dynamo)  # fmt: skip
    return dynamo


def example_feeds(ctx) -> dict:
    """One batch of real samples at the recipe's batch size (exporters trace with it)."""
    from converters.verify import pad_batch
    from edgepack.core.dataset import ArrayDataset

    batch = ctx.recipe.model.inputs[0].shape[0]
    first: ArrayDataset = ctx.verify_data
    return pad_batch(next(first.batches(batch)), batch)
