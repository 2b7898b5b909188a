"""convert: each float ONNX artifact -> TFLite float32 through edgepack's own ONNX -> TensorFlow lowering."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgepack.core.artifacts import Artifact
from edgepack.stages.base import StageConfig, StageContext, StageOutput, float_onnx_without_tflite
from edgepack.stages.registry import register_stage


class ConvertConfig(StageConfig):
    stage: Literal["convert"] = "convert"
    to: list[Literal["tflite"]] = Field(["tflite"], description="Target formats (TFLite float32 for now).")


@register_stage("convert", ConvertConfig, reads=float_onnx_without_tflite)
def run_convert(config: ConvertConfig, inputs: list[Artifact], ctx: StageContext) -> StageOutput:
    return StageOutput([_to_tflite(ctx, source) for source in inputs])


def _to_tflite(ctx: StageContext, source: Artifact) -> Artifact:
    from edgepack.converters.onnx_to_tflite import convert_onnx_to_tflite, tflite_artifact

    out = ctx.artifact_path(source).with_suffix(".tflite")
    shapes = {i.name: i.shape for i in ctx.model.inputs}  # fixes dynamic dims of foreign ONNX files
    conversion = convert_onnx_to_tflite(ctx.artifact_path(source), out, input_shapes=shapes)
    return tflite_artifact(ctx.run_dir, out, conversion, name=source.name.replace("onnx", "tflite", 1),
                           precision=source.precision, parent=source.name, stage="convert")  # fmt: skip
