"""prune: the latest torch model -> a pruned torch model (weights zeroed, or channels really removed), optionally
fine-tuned with distillation from the unpruned model. Export and quantize then read the pruned model.

Unstructured zeros only shrink a file once it is compressed; the pipeline reads each exported file's zero fraction
per layer and its gzip size (results.json ``artifacts[].sparsity`` and ``gzip_bytes``). Structured pruning removes
output channels (and the inputs that read them) so the exported model is smaller and faster as it is.
"""

from __future__ import annotations

from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgepack.calibration.data_config import DataConfig
from edgepack.compression.options import FinetuneConfig, Importance, Scope
from edgepack.core.artifacts import Artifact
from edgepack.stages.base import StageConfig, StageContext, StageOutput, latest_torch
from edgepack.stages.registry import register_stage
from edgepack.stages.training import TRAIN_DATA_HELP, distill, example_tensors, finetune_steps, train_dataset


class PruneMethod(StrEnum):
    UNSTRUCTURED = "unstructured"  # the smallest-magnitude weights become zero; shapes stay
    STRUCTURED = "structured"  # whole output channels go, with every tensor that depends on them


class Schedule(StrEnum):
    ONE_SHOT = "one_shot"
    GRADUAL = "gradual"  # Zhu & Gupta 2017: sparsity rises on a cubic ramp over the fine-tuning steps


# A gradual schedule prunes during the first GRADUAL_SPAN of the fine-tuning steps, then lets the model recover at
# the final sparsity, raising the masks GRADUAL_UPDATES times (Zhu & Gupta prune in ~every 100-1000 steps).
GRADUAL_SPAN, GRADUAL_UPDATES = 0.75, 20


class PruneConfig(StageConfig):
    stage: Literal["prune"] = "prune"
    method: PruneMethod = Field(
        PruneMethod.UNSTRUCTURED,
        description="'unstructured' (zero weights) or "
        "'structured' (remove output channels; the exported model is really smaller).",
    )
    amount: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Fraction removed, strictly between 0 and 1: of the weights "
        "(unstructured) or of the output channels (structured).",
    )
    scope: Scope = Field(
        Scope.LAYER,
        description="'layer': the amount in every layer; 'global': one threshold "
        "over all layers, so layers that matter less lose more.",
    )
    layers: list[str] | None = Field(
        None,
        description="Unstructured: the Conv/Linear modules to prune (names as in named_modules()); default every one.",
    )
    importance: Importance = Field(
        Importance.L1,
        description="Structured: how channels are ranked: l1, l2 (weight "
        "norms), bn_scale (|gamma| of the following BatchNorm) or taylor (|w x grad|).",
    )
    ignored_layers: list[str] = Field(
        [],
        description="Structured: modules whose output channels are kept (the "
        "layers producing model outputs always are).",
    )
    round_to: int | None = Field(None, gt=0, description="Structured: keep channel counts multiples of this.")
    schedule: Schedule = Field(
        Schedule.ONE_SHOT,
        description="Unstructured: 'one_shot', or 'gradual' (needs 'finetune'; the sparsity rises over its steps).",
    )
    finetune: FinetuneConfig | None = Field(
        None,
        description="Fine-tune after pruning, distilling from the "
        "unpruned model (alpha 0: labels only); pruned weights stay zero.",
    )
    train_data: DataConfig | Path | None = Field(None, description=TRAIN_DATA_HELP + " Also feeds taylor importance.")

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        if self.schedule == Schedule.GRADUAL and (self.finetune is None or self.method == PruneMethod.STRUCTURED):
            raise ValueError(
                "schedule 'gradual' needs method 'unstructured' and a 'finetune' block (its steps carry "
                "the schedule); use schedule 'one_shot' otherwise"
            )
        return self


@register_stage("prune", PruneConfig, reads=latest_torch, torch_only=True)
def run_prune(config: PruneConfig, inputs: list[Artifact], ctx: StageContext) -> StageOutput:
    (parent,) = inputs
    module = ctx.editable_module(parent)
    needs_data = config.finetune is not None or config.importance == Importance.TAYLOR
    data = train_dataset(ctx, config.train_data, "prune") if needs_data else None  # loaded once
    if config.method == PruneMethod.STRUCTURED:
        details, edits = _prune_channels(config, ctx, module, parent, data), [{"kind": "channels_removed"}]
    else:
        details, edits = _prune_weights(config, module, ctx, parent, data), []
    details["config"] = config.model_dump(mode="json", exclude={"stage"})
    return StageOutput([ctx.save_torch(module, name="torch-pruned", stage="prune", parent=parent, edits=edits,
                                       pruning=details)])  # fmt: skip


def _prune_weights(config: PruneConfig, module, ctx: StageContext, parent: Artifact, data) -> dict:
    """Masks stay on through fine-tuning so pruned weights stay zero; they are folded in at the end."""
    import torch

    from edgepack.compression.pruning import (
        GradualPruner,
        add_masks,
        prunable_layers,
        raise_sparsity,
        remove_masks,
        zero_fractions,
    )

    if config.schedule == Schedule.GRADUAL:
        span = max(1, int(finetune_steps(config.finetune, data[0]) * GRADUAL_SPAN))
        pruner = GradualPruner(
            module,
            final_sparsity=config.amount,
            begin_step=0,
            end_step=span,
            frequency=max(1, span // GRADUAL_UPDATES),
            scope=config.scope,
            layers=config.layers,
        )
        finetuned = distill(ctx, module, parent, config.finetune, data, on_step=pruner.step)
        return {"layers": pruner.finish(), "finetune": finetuned}
    targets = prunable_layers(module, config.layers)
    add_masks(targets)
    with torch.no_grad():
        raise_sparsity(targets, config.amount, Scope(config.scope))
    finetuned = None
    if config.finetune is not None:
        finetuned = distill(ctx, module, parent, config.finetune, data)
    remove_masks(targets)
    return {"layers": zero_fractions(targets), "finetune": finetuned}


def _prune_channels(config: PruneConfig, ctx: StageContext, module, parent: Artifact, data) -> dict:
    from edgepack.compression.structured import prune_channels

    taylor = _taylor_batches(ctx, data[0]) if config.importance == Importance.TAYLOR else None
    report = prune_channels(
        module,
        example_tensors(ctx),
        ratio=config.amount,
        importance=config.importance,
        scope=config.scope,
        ignored_layers=config.ignored_layers,
        taylor_batches=taylor,
        round_to=config.round_to,
    )
    finetuned = None
    if config.finetune is not None:
        finetuned = distill(ctx, module, parent, config.finetune, data)
    return {"channels": asdict(report), "finetune": finetuned}


def _taylor_batches(ctx: StageContext, data, count: int = 8, size: int = 64) -> list:
    """A few labelled training batches whose loss gradients rank the channels."""
    import torch

    names = [i.name for i in ctx.model.inputs]
    starts = range(0, min(len(data), count * size), size)
    return [(tuple(torch.from_numpy(data.inputs[n][i : i + size]) for n in names),
             torch.from_numpy(data.labels[i : i + size])) for i in starts]  # fmt: skip
