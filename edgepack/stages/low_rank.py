"""low_rank: the latest torch model -> one whose Linear/Conv layers are truncated-SVD factor pairs where that saves
parameters, optionally fine-tuned with distillation from the model before factorisation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgepack.calibration.data_config import DataConfig
from edgepack.compression.options import ConvDecomposition, FinetuneConfig
from edgepack.core.artifacts import Artifact
from edgepack.stages.base import StageConfig, StageContext, StageOutput, latest_torch
from edgepack.stages.registry import register_stage
from edgepack.stages.training import TRAIN_DATA_HELP, distill, train_dataset


class LowRankConfig(StageConfig):
    stage: Literal["low_rank"] = "low_rank"
    rank: int | None = Field(None, ge=1, description="Keep this many singular values in every chosen layer.")
    energy: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Or: keep the fewest singular values holding this fraction of each layer's "
        "squared singular values (its energy), e.g. 0.9.",
    )
    layers: list[str] | None = Field(
        None,
        description="Linear/Conv2d modules to factorise; default every one. A layer "
        "is only factorised where the two factors hold fewer parameters.",
    )
    conv: ConvDecomposition = Field(
        ConvDecomposition.CHANNEL,
        description="Conv split: 'channel' (k x k to rank r, then 1 x 1) or 'spatial' (k x 1 to rank r, then 1 x k).",
    )
    finetune: FinetuneConfig | None = Field(
        None, description="Fine-tune after factorising, distilling from the model before it (alpha 0: labels only)."
    )
    train_data: DataConfig | Path | None = Field(None, description=TRAIN_DATA_HELP)

    @model_validator(mode="after")
    def _one_budget(self) -> LowRankConfig:
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of 'rank' (e.g. 8) or 'energy' (e.g. 0.9)")
        return self


@register_stage("low_rank", LowRankConfig, reads=latest_torch, torch_only=True)
def run_low_rank(config: LowRankConfig, inputs: list[Artifact], ctx: StageContext) -> StageOutput:
    from edgepack.compression.factorisation import factorise

    (parent,) = inputs
    module = ctx.editable_module(parent)
    report = factorise(module, rank=config.rank, energy=config.energy, layers=config.layers, conv=config.conv)
    details = {**report.to_dict(), "config": config.model_dump(mode="json", exclude={"stage"}), "finetune": None}
    if config.finetune is not None:
        details["finetune"] = distill(
            ctx, module, parent, config.finetune, train_dataset(ctx, config.train_data, "low_rank")
        )
    edits = [{"kind": "low_rank", "layers": report.structure()}]
    return StageOutput([ctx.save_torch(module, name="torch-low-rank", stage="low_rank", parent=parent, edits=edits,
                                       low_rank=details)])  # fmt: skip
