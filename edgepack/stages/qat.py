"""qat: the latest torch model, fine-tuned with fake-quant that simulates exactly what the quantize stage writes.

prepare (calibrate its float export, insert fake-quant at the same tensors with those ranges) -> fine-tune (straight-
through estimator, distilling from the float model) -> convert (the fine-tuned float model, BatchNorm folded, plus
the trained ranges under the tensor names of its ONNX export). The quantize stage then writes ONNX QDQ and TFLite
from those ranges instead of calibrating, so what was trained is what ships; the simulated accuracy is recorded
beside the accuracy each file measures in its runtime.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from edgepack.calibration.data_config import DataConfig
from edgepack.calibration.ptq import QuantScheme
from edgepack.compression.options import FinetuneConfig, QatOptions
from edgepack.core.artifacts import Artifact
from edgepack.core.dataset import ArrayDataset
from edgepack.stages.base import StageConfig, StageContext, StageOutput, latest_torch
from edgepack.stages.handoffs import QatRanges
from edgepack.stages.registry import register_stage
from edgepack.stages.training import TRAIN_DATA_HELP, distill, train_dataset

QAT_FINETUNE = FinetuneConfig(epochs=3, learning_rate=5e-4)  # a short, gentle fine-tune from trained weights


class QatConfig(StageConfig, QatOptions):
    stage: Literal["qat"] = "qat"
    precision: Literal["int8", "int16x8"] = Field(
        "int8",
        description="The scheme simulated: int8, or int16x8; the quantize stage after it must ask for the same.",
    )
    symmetric_activations: bool = Field(False, description="int8 activations with zero point 0 (int16 always is).")
    samples: int = Field(256, gt=0, description="Samples of the training data that calibrate the starting ranges.")
    finetune: FinetuneConfig = Field(
        QAT_FINETUNE, description="The QAT fine-tune, distilling from the float model (alpha 0: labels only)."
    )
    train_data: DataConfig | Path | None = Field(
        None, description=TRAIN_DATA_HELP + " Also calibrates the starting ranges."
    )
    holdout: float = Field(
        0.1, gt=0, lt=1, description="Fraction of the training data kept out of the fine-tune: the epoch (0 = the "
        "PTQ starting point) scoring best on it is kept, and the PTQ and QAT int8 ONNX files are compared on it.",
    )  # fmt: skip

    @field_validator("finetune", mode="before")
    @classmethod
    def _qat_defaults(cls, value):
        """A partial finetune block keeps QAT's gentle defaults for what it leaves out (a block naming only the
        epochs used to get the generic learning rate 3e-3, enough to wreck a BatchNorm-folded ResNet)."""
        return {**QAT_FINETUNE.model_dump(), **value} if isinstance(value, dict) else value

    def scheme(self) -> QuantScheme:
        return QuantScheme(  # min-max starting ranges: QAT trains them
            precision=self.precision, symmetric_activations=self.symmetric_activations, samples=self.samples,
            method="minmax",
        )


@register_stage("qat", QatConfig, reads=latest_torch, torch_only=True, exports=True)
def run_qat(config: QatConfig, inputs: list[Artifact], ctx: StageContext) -> StageOutput:
    """Hands the quantize stage the trained ranges (``QatRanges``) beside the fine-tuned float model."""
    from edgepack.compression import qat_guard
    from edgepack.compression.qat_model import packed_weight_bytes, prepare_qat

    (parent,) = inputs
    module = ctx.editable_module(parent)
    data, held_out = _split(config, ctx)
    # Named like every temp file of a run (.*.tmp): a killed run's is removed by the next.
    with tempfile.TemporaryDirectory(prefix=".qat-", suffix=".tmp", dir=ctx.run_dir) as tmp:
        float_onnx = _export(ctx, module, Path(tmp) / "before.onnx")
        start, example = _starting_calibration(config, ctx, float_onnx, data)
        model = prepare_qat(
            module,
            float_onnx,
            start,
            example,
            input_names=_input_names(ctx),
            learn_ranges=config.learn_ranges,
            weight_bits=config.weight_bits,
            momentum=config.momentum,
        )
        best = qat_guard.BestEpoch(model, held_out, _input_names(ctx))
        finetuned = distill(ctx, model, parent, config.finetune, data, on_epoch=best)
        finetuned["kept"] = best.restore()
        verification = _verify_against_float(config, ctx, model, module)  # before anything is exported from it
        trained = model.float_module()
        after_onnx = _export(ctx, trained, Path(tmp) / "after.onnx")
        calibration = model.calibration_for(after_onnx)
        vs_ptq = _compare_with_ptq(ctx, module, (float_onnx, start), (after_onnx, calibration), held_out, data[1])
    ranges = {t: (float(lo), float(hi)) for t, (lo, hi) in calibration.ranges.items()}
    record = {
        "scheme": config.scheme().model_dump(mode="json"),
        "ranges": {t: list(r) for t, r in ranges.items()},
        "simulated_accuracy": _simulated_accuracy(ctx, model),
        "weight_bits": config.weight_bits,
        "packed_weight_bytes": packed_weight_bytes(trained, config.weight_bits),
        "finetune": finetuned,
        "vs_ptq": vs_ptq,
        "verification": verification,
    }
    artifact = ctx.save_torch(trained, name="torch-qat", stage="qat", parent=parent, edits=[{"kind": "fold_batchnorm"}],
                              qat=record)  # fmt: skip
    return StageOutput([artifact], {artifact.name: QatRanges(scheme=record["scheme"], ranges=ranges)})


def _split(config: QatConfig, ctx: StageContext) -> tuple[tuple[ArrayDataset, str], ArrayDataset]:
    """((the samples to train and calibrate on, description), the held-out ones), from the training data."""
    from edgepack.compression import qat_guard

    dataset, description = train_dataset(ctx, config.train_data, "qat")
    train, held_out = qat_guard.split_holdout(dataset, config.holdout, ctx.seed)
    return (train, description), held_out


def _verify_against_float(config: QatConfig, ctx: StageContext, model, start) -> dict:
    """The QAT model vs the float model it started from, on the verification samples, with the int8 tolerance.
    Binary and ternary weights change the model on purpose: their figures are recorded, not enforced."""
    from edgepack.compression import qat_guard

    tolerance = ctx.verify.integer_tolerance if config.weight_bits == "int8" else None
    outputs, reference = (ctx.torch_outputs(m, ctx.verify_data) for m in (model, start))
    classifier = ctx.task == "classification"
    return qat_guard.check_against_float("torch-qat", outputs, reference, tolerance=tolerance, classifier=classifier)


def _compare_with_ptq(ctx: StageContext, start, ptq: tuple, qat: tuple, held_out: ArrayDataset,
                      description: str) -> dict:  # fmt: skip
    """PTQ's and QAT's int8 ONNX files (each a (float ONNX, calibration) pair) in onnxruntime on held-out data."""
    from edgepack.compression import qat_guard

    reference = qat_guard.module_logits(start, held_out, _input_names(ctx))
    ptq_figures, qat_figures = (qat_guard.int8_onnx_figures(*pair, held_out, reference, ctx.batch_size)
                                for pair in (ptq, qat))  # fmt: skip
    return qat_guard.vs_ptq_record(ptq_figures, qat_figures, description, len(held_out))


def _export(ctx: StageContext, module, out: Path):
    """With the recipe's export settings, so the trained ranges carry the tensor names the export stage writes."""
    import onnx

    ctx.export_onnx(module, out)
    return onnx.load(str(out))


def _starting_calibration(config: QatConfig, ctx: StageContext, float_onnx, data: tuple[ArrayDataset, str]):
    from edgepack.calibration.ptq import calibrate

    dataset, description = data
    calibration = calibrate(float_onnx, dataset, config.scheme(), description)
    return calibration, dataset.head(8).inputs  # a few samples make matching torch values to ONNX tensors unambiguous


def _simulated_accuracy(ctx: StageContext, model) -> dict | None:
    """Top-1 of the fake-quant model on the evaluation data: what the integer files should measure."""
    data = ctx.eval_data
    if data is None or data.labels is None:
        return None
    model.eval()
    logits = next(iter(ctx.torch_outputs(model, data).values()))
    return {"top1": float(np.mean(logits.reshape(len(logits), -1).argmax(1) == data.labels)), "samples": len(data)}


def _input_names(ctx: StageContext) -> list[str]:
    return [i.name for i in ctx.model.inputs]
