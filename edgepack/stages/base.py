"""The stage contract: a declared config, the artifacts a stage reads (a selector), a narrow context, new artifacts.

A stage is ``run(config, inputs, ctx) -> StageOutput``: ``inputs`` are what its selector picked from the artifacts
made so far (the pipeline resolves them, and the stage's cache key hashes exactly them); ``ctx`` is a
``StageContext``, the few things of the run a stage may use, never the run itself. What one stage hands a later one
(QAT's trained ranges) is a typed record in ``StageOutput.handoffs`` (stages/handoffs.py), read back with
``ctx.handoff``. Stages never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from edgepack.core.artifacts import Artifact, Format, Precision
from edgepack.core.dataset import ArrayDataset

if TYPE_CHECKING:  # types only: the recipe imports the stage registry, not the other way round
    from edgepack.recipe import ModelConfig, VerifyConfig

Record = TypeVar("Record", bound=BaseModel)


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    stage: str = Field(description="Which registered stage this entry configures.")


@dataclass
class StageOutput:
    """New artifacts, and typed records for later stages keyed by the artifact they describe."""

    artifacts: list[Artifact]
    handoffs: dict[str, BaseModel] = field(default_factory=dict)


class StageContext(Protocol):
    """What a stage may use of the run (running/context.py implements it)."""

    run_dir: Path
    name: str  # the recipe's name: every file name starts with it
    model: ModelConfig  # input names, shapes and dtypes; output names; the source's format
    task: str
    seed: int
    verify: VerifyConfig  # the tolerances artifacts are held to
    verify_data: ArrayDataset  # the held-out samples every artifact is verified on
    eval_data: ArrayDataset | None
    batch_size: int  # what the exported files take

    def artifact_file(self, kind: str, suffix: str) -> Path:
        """Where a new artifact's file goes: ``artifacts/NAME.KIND.SUFFIX`` (the one place file names are built)."""

    def artifact_path(self, artifact: Artifact) -> Path: ...

    def open_session(self, artifact: Artifact) -> Any:
        """The artifact's runtime session (onnxruntime or LiteRT), opened once per run."""

    def stage_data(self, source: Any, *, stage: str, key: str, labels: bool = False) -> tuple[ArrayDataset, str]:
        """The data a stage learns from (its ``key``: calibration_data, train_data) and a description of it."""

    def torch_module(self, artifact: Artifact) -> Any:
        """A torch artifact's module (read only)."""

    def editable_module(self, artifact: Artifact) -> Any:
        """A copy of a torch artifact's module for the stage to change."""

    def save_torch(self, module: Any, *, name: str, stage: str, parent: Artifact, edits: list[dict] = (),
                   **details: Any) -> Artifact:  # fmt: skip
        """Write a torch module a stage made (weights only, plus the structural ``edits`` that rebuild it)."""

    def torch_outputs(self, module: Any, dataset: ArrayDataset) -> dict[str, Any]: ...

    def example_feeds(self) -> dict[str, Any]:
        """One batch of real samples at the recipe's shapes (exporters and tracers run it)."""

    def export_onnx(self, model: Artifact | Any, out: Path) -> bool:
        """Export a torch artifact or module with the recipe's export settings; True when the dynamo exporter ran."""

    def lineage(self, artifact: Artifact) -> list[Artifact]:
        """The artifacts ``artifact`` was made from, nearest first."""

    def progress(self, done: int, total: int, text: str, milestone: bool = False) -> None:
        """Say where a long step is (``done`` of ``total``; ``text`` like 'epoch 2/5, loss 0.31'): a bar with an
        ETA on a terminal, plain lines in a CI log; a milestone (an epoch's end) is worth a line of its own."""

    def handoff(self, kind: type[Record], artifact: Artifact) -> Record | None:
        """The ``kind`` record a stage handed on for ``artifact`` or its nearest ancestor that has one."""


Selector = Callable[[list[Artifact]], list[Artifact]]


def latest_torch(artifacts: list[Artifact]) -> list[Artifact]:
    """The latest torch model: the source, or what the last compression stage made of it."""
    return [a for a in artifacts if a.format == Format.TORCH][-1:]


def latest_torch_and_source(artifacts: list[Artifact]) -> list[Artifact]:
    """[the latest torch model, the source model] (a teacher may be either)."""
    latest = latest_torch(artifacts)
    return latest + artifacts[:1] if latest else []


def first_float_onnx(artifacts: list[Artifact]) -> list[Artifact]:
    """The float ONNX model everything integer is made from (exported, or the source file)."""
    return [a for a in artifacts if a.format == Format.ONNX and a.precision == Precision.FP32][:1]


def float_onnx_without_tflite(artifacts: list[Artifact]) -> list[Artifact]:
    """Every float ONNX artifact that has no TFLite child yet."""
    converted = {a.parent for a in artifacts if a.format == Format.TFLITE}
    return [
        a for a in artifacts if a.format == Format.ONNX and a.precision == Precision.FP32 and a.name not in converted
    ]
