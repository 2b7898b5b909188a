"""What the torch compression stages share: their labelled training data, fine-tuning with distillation from the
model they started from, and one batch of example inputs for tracing. A helper of the stages, not a stage."""

from __future__ import annotations

import math

from edgepack.compression.options import FinetuneConfig
from edgepack.core.artifacts import Artifact
from edgepack.core.dataset import ArrayDataset
from edgepack.stages.base import StageContext

TRAIN_DATA_HELP = ("Labelled training data for fine-tuning: a .npz (one array per input + 'labels') or a data "
                   "source block; default for 'digits' data: its train split.")  # fmt: skip


def train_dataset(ctx: StageContext, source, stage: str) -> tuple[ArrayDataset, str]:
    return ctx.stage_data(source, stage=stage, key="train_data", labels=True)


def finetune_steps(config: FinetuneConfig, data: ArrayDataset) -> int:
    return config.epochs * math.ceil(len(data) / config.batch_size)


def distill(ctx: StageContext, module, teacher: Artifact, config: FinetuneConfig, data: tuple[ArrayDataset, str],
            on_step=None, on_epoch=None) -> dict:  # fmt: skip
    """Fine-tune ``module`` in place on ``data`` (a dataset and its description), distilling from ``teacher`` (the
    model before this stage) unless alpha is 0 and no features are matched; returns the record for results.json."""
    from edgepack.compression.distillation import finetune

    dataset, description = data
    uses_teacher = config.alpha > 0 or bool(config.feature_matching)
    report = finetune(module, dataset, config, teacher=ctx.torch_module(teacher) if uses_teacher else None,
                      input_names=[i.name for i in ctx.model.inputs], on_step=on_step,
                      on_epoch=on_epoch, on_progress=ctx.progress)  # fmt: skip
    return {**report.to_dict(), "data": description, "teacher": teacher.name if uses_teacher else None}


def example_tensors(ctx: StageContext) -> tuple:
    """One batch of real samples at the recipe's input shapes (pruning graphs and MAC counts trace with it)."""
    import torch

    feeds = ctx.example_feeds()
    return tuple(torch.from_numpy(feeds[i.name]) for i in ctx.model.inputs)
