"""The quantize stage's accuracy tools: cross-layer equalization before calibration, bias correction after.

Equalization keeps the float model's function, so its result is a float ONNX artifact of its own
(``onnx-fp32-equalized``), verified against the reference like any float file, and the integer files name it as
their parent. Bias correction deliberately moves the float model (towards what the integer one computes), so its
model is only the input of the two integer writers, never an artifact.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgepack.artifacts import Artifact


@dataclass
class FloatPreparation:
    """The float model the integer files are written from, and what was done to it."""

    source: Artifact  # the integer files' parent: the equalized artifact when equalization changed the model
    model: onnx.ModelProto
    artifacts: list[Artifact] = field(default_factory=list)  # written here, returned before the integer files
    details: dict = field(default_factory=dict)  # for the integer artifacts' details
    bias_corrected: bool = False

    @contextmanager
    def float_file(self, ctx) -> Iterator[Path]:
        """A file holding ``model`` for the TFLite converter, which reads ONNX from disk."""
        if not self.bias_corrected:
            yield ctx.artifact_path(self.source)
            return
        with tempfile.TemporaryDirectory(prefix="edgepack-bias-corrected-") as folder:
            path = Path(folder) / "bias_corrected.onnx"
            onnx.save(self.model, str(path))
            yield path

    def record(self, integer_artifacts: list[Artifact]) -> None:
        for artifact in integer_artifacts:
            artifact.details.update(self.details)


EQUALIZED = "onnx-fp32-equalized"


def prepare_float_model(config, ctx, source: Artifact, model: onnx.ModelProto) -> FloatPreparation:
    """Equalize when the scheme asks; the equalized model is written, described and returned as an artifact."""
    prepared = FloatPreparation(source, model)
    if not config.cross_layer_equalization:
        return prepared
    from calibration.equalize import equalize_model

    equalization = equalize_model(model)
    prepared.details["cross_layer_equalization"] = equalization.summary()
    if not equalization.pairs:
        return prepared
    prepared.model = equalization.model
    earlier = next((a for a in ctx.artifacts if a.name == EQUALIZED and a.parent == source.name), None)
    prepared.source = earlier or _equalized_artifact(ctx, source, equalization.model, prepared.details)
    prepared.artifacts += [] if earlier else [prepared.source]  # a second quantize stage reuses the first's file
    return prepared


def _equalized_artifact(ctx, source: Artifact, model: onnx.ModelProto, details: dict) -> Artifact:
    from converters.onnx_info import onnx_artifact
    from edgepack.artifacts import atomic_path

    out = ctx.artifact_path(source).with_name(f"{ctx.recipe.name}.fp32-equalized.onnx")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    artifact = onnx_artifact(ctx.run_dir, out, name=EQUALIZED, stage="quantize", parent=source.name)
    artifact.details["cross_layer_equalization"] = details["cross_layer_equalization"]
    return artifact


def apply_bias_correction(config, prepared: FloatPreparation, calibration, dataset, batch_size: int):
    """Bias-correct ``prepared.model`` when the scheme asks; returns the calibration planned on the new model."""
    if not config.bias_correction:
        return calibration
    from calibration.bias_correction import correct_biases, with_corrected_model

    correction = correct_biases(prepared.model, calibration.plan, dataset.head(config.samples), batch_size,
                         per_channel_weights=config.per_channel_weights)  # fmt: skip
    prepared.model, prepared.bias_corrected = correction.model, True
    prepared.details["bias_correction"] = correction.summary()
    return with_corrected_model(calibration, correction.model)
