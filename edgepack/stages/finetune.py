"""finetune: the latest torch model, trained further on labelled data while distilling from a teacher (Hinton, Vinyals
& Dean 2015), by default the source model, so a pruned or factorised model learns back what compression cost it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepack.calibration.data_config import DataConfig
from edgepack.compression.options import FinetuneConfig
from edgepack.core.artifacts import Artifact
from edgepack.stages.base import StageConfig, StageContext, StageOutput, latest_torch_and_source
from edgepack.stages.registry import register_stage
from edgepack.stages.training import TRAIN_DATA_HELP, distill, train_dataset


class Teacher(StrEnum):
    SOURCE = "source"  # the model as loaded, before any compression stage
    PARENT = "parent"  # the model this stage starts from


class FinetuneStageConfig(StageConfig, FinetuneConfig):
    stage: Literal["finetune"] = "finetune"
    teacher: Teacher = Field(
        Teacher.SOURCE,
        description="Whose outputs the soft targets are: 'source' (the model "
        "as loaded) or 'parent' (the model before this stage).",
    )
    train_data: DataConfig | Path | None = Field(None, description=TRAIN_DATA_HELP)


@register_stage("finetune", FinetuneStageConfig, reads=latest_torch_and_source, torch_only=True)
def run_finetune(config: FinetuneStageConfig, inputs: list[Artifact], ctx: StageContext) -> StageOutput:
    parent, source = inputs
    teacher = source if config.teacher == Teacher.SOURCE else parent
    module = ctx.editable_module(parent)
    training = FinetuneConfig.model_validate(config.model_dump(include=set(FinetuneConfig.model_fields)))
    record = distill(ctx, module, teacher, training, train_dataset(ctx, config.train_data, "finetune"))
    return StageOutput([ctx.save_torch(module, name="torch-finetuned", stage="finetune", parent=parent,
                                       finetune=record)])  # fmt: skip
