"""finetune: the latest torch model, trained further on labelled data while distilling from a teacher (Hinton, Vinyals
& Dean 2015), by default the source model, so a pruned or factorised model learns back what compression cost it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field

from calibration.data_config import DataConfig
from edgepack.compression.distillation import FinetuneConfig
from edgepack.core.artifacts import Artifact
from edgepack.stages.base import StageConfig
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


@register_stage("finetune", FinetuneStageConfig, torch_only=True)
def run_finetune(config: FinetuneStageConfig, ctx) -> list[Artifact]:
    """Reads the latest torch model."""
    from edgepack.running.torch_artifacts import editable_copy, latest_torch_artifact, save_torch_artifact

    parent = latest_torch_artifact(ctx)
    teacher = ctx.artifacts[0] if config.teacher == Teacher.SOURCE else parent
    module = editable_copy(ctx, parent)
    training = FinetuneConfig.model_validate(config.model_dump(include=set(FinetuneConfig.model_fields)))
    record = distill(ctx, module, teacher, training, train_dataset(ctx, config.train_data, "finetune"))
    return [save_torch_artifact(ctx, module, name="torch-finetuned", stage="finetune", parent=parent,
                                finetune=record)]  # fmt: skip
