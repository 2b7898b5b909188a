"""convert: each float ONNX artifact -> TFLite float32 through edgepack's own ONNX -> TensorFlow lowering."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgepack.core.artifacts import Artifact, Format, Precision, sha256_file
from edgepack.stages.base import StageConfig
from edgepack.stages.registry import register_stage


class ConvertConfig(StageConfig):
    stage: Literal["convert"] = "convert"
    to: list[Literal["tflite"]] = Field(["tflite"], description="Target formats (TFLite float32 for now).")


@register_stage("convert", ConvertConfig)
def run_convert(config: ConvertConfig, ctx) -> list[Artifact]:
    """Reads every float ONNX artifact that has no TFLite child yet."""
    converted = {a.parent for a in ctx.artifacts if a.format == Format.TFLITE}
    sources = [
        a
        for a in ctx.artifacts
        if a.format == Format.ONNX and a.precision == Precision.FP32 and a.name not in converted
    ]
    return [_to_tflite(ctx, source) for source in sources]


def _to_tflite(ctx, source: Artifact) -> Artifact:
    from converters.onnx_to_tflite import convert_onnx_to_tflite

    out = ctx.artifact_path(source).with_suffix(".tflite")
    shapes = {i.name: i.shape for i in ctx.recipe.model.inputs}  # fixes dynamic dims of foreign ONNX files
    conversion = convert_onnx_to_tflite(ctx.artifact_path(source), out, input_shapes=shapes)
    return tflite_artifact(ctx, out, conversion, name=source.name.replace("onnx", "tflite", 1),
                           precision=source.precision, parent=source.name, stage="convert")  # fmt: skip


def tflite_artifact(ctx, out, conversion, *, name: str, precision, parent: str, stage: str, **details) -> Artifact:
    """The artifact record of a .tflite written by edgepack's converter (float or integer)."""
    from converters.tflite_metadata import read_min_runtime_version

    return Artifact(
        name=name, format=Format.TFLITE, precision=precision, path=str(out.relative_to(ctx.run_dir)),
        sha256=sha256_file(out), bytes=out.stat().st_size, parent=parent, stage=stage,
        inputs=conversion.inputs, outputs=conversion.outputs, op_counts=conversion.op_counts,
        details={"conversion_seconds": round(conversion.seconds, 3), "transposes": conversion.op_counts["TRANSPOSE"],
                 "min_runtime_version": read_min_runtime_version(out.read_bytes()), **details},
    )  # fmt: skip
