"""What the torch compression stages share: their labelled training data, fine-tuning with distillation from the
model they started from, and one batch of example inputs for tracing."""

from __future__ import annotations

import math

import torch

from edgepack.compression.distillation import FinetuneConfig
from edgepack.core.artifacts import Artifact
from edgepack.core.dataset import ArrayDataset

TRAIN_DATA_HELP = ("Labelled training data for fine-tuning: a .npz (one array per input + 'labels') or a data "
                   "source block; default for 'digits' data: its train split.")  # fmt: skip


def train_dataset(ctx, source, stage: str) -> tuple[ArrayDataset, str]:
    from edgepack.running.data import stage_dataset

    return stage_dataset(ctx.recipe, source, stage=stage, key="train_data", labels=True)


def finetune_steps(config: FinetuneConfig, data: ArrayDataset) -> int:
    return config.epochs * math.ceil(len(data) / config.batch_size)


def distill(ctx, module: torch.nn.Module, teacher: Artifact, config: FinetuneConfig, data: tuple[ArrayDataset, str],
            on_step=None, on_epoch=None) -> dict:  # fmt: skip
    """Fine-tune ``module`` in place on ``data`` (a dataset and its description), distilling from ``teacher`` (the
    model before this stage) unless alpha is 0 and no features are matched; returns the record for results.json."""
    from edgepack.compression.distillation import finetune
    from edgepack.running.torch_artifacts import module_of

    dataset, description = data
    uses_teacher = config.alpha > 0 or bool(config.feature_matching)
    report = finetune(module, dataset, config, teacher=module_of(ctx, teacher) if uses_teacher else None,
                      input_names=[i.name for i in ctx.recipe.model.inputs], on_step=on_step,
                      on_epoch=on_epoch)  # fmt: skip
    return {**report.to_dict(), "data": description, "teacher": teacher.name if uses_teacher else None}


def example_tensors(ctx) -> tuple[torch.Tensor, ...]:
    """One batch of real samples at the recipe's input shapes (pruning graphs and MAC counts trace with it)."""
    from edgepack.stages.export import example_feeds

    feeds = example_feeds(ctx)
    return tuple(torch.from_numpy(feeds[i.name]) for i in ctx.recipe.model.inputs)
