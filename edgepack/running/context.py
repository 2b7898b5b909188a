"""The run's state (``RunContext``) and the narrow view of it a stage gets (``StageView``, a StageContext)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgepack.core.artifacts import Artifact, Format, ancestors, sha256_file
from edgepack.core.dataset import ArrayDataset
from edgepack.recipe import ModelFormat, Recipe
from edgepack.running import measure
from edgepack.running.cache import StepCache, cache_key
from edgepack.running.loading import LoadedModel
from edgepack.running.progress import Steps
from edgepack.stages.export import ExportConfig, Exporter


@dataclass
class RunContext:
    """Everything the pipeline keeps: the recipe, the loaded model, the data, the artifacts so far, their figures."""

    recipe: Recipe
    run_dir: Path
    loaded: LoadedModel
    cache: StepCache
    steps: Steps
    eval_data: ArrayDataset | None
    verify_data: ArrayDataset
    artifacts: list[Artifact] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)  # artifact name -> measured figures
    handoffs: dict[str, dict[str, BaseModel]] = field(default_factory=dict)  # artifact name -> {kind: record}
    torch_modules: dict[str, object] = field(default_factory=dict)  # torch artifact name -> module (made or rebuilt)
    _sessions: dict[str, object] = field(default_factory=dict)
    _references: dict[str, dict] = field(default_factory=dict)

    @cached_property
    def reference(self) -> dict[str, np.ndarray]:
        """The source model's outputs on the verification samples."""
        return self.reference_outputs(self.artifacts[0])

    def reference_artifact(self, artifact: Artifact) -> Artifact:
        """What an artifact is verified against: the torch model it was exported from (the pruned or fine-tuned
        one after compression stages), else the source."""
        lineage = ancestors(self.artifacts, artifact)
        return next((a for a in lineage if a.format == Format.TORCH), None) or self.artifacts[0]

    def reference_outputs(self, artifact: Artifact) -> dict[str, np.ndarray]:
        if artifact.name not in self._references:
            self._references[artifact.name] = measure.artifact_outputs(self, artifact, self.verify_data)
        return self._references[artifact.name]

    @cached_property
    def data_key(self) -> str:
        """The evaluation data's config and file hash: part of every measured step's key, hashed once per run."""
        data = self.recipe.data
        file_hash = sha256_file(data.path) if data and data.path and data.path.is_file() else None
        return cache_key(data.model_dump(mode="json") if data else None, file_hash, self.input_values_key)

    @cached_property
    def input_values_key(self) -> str:
        """The content of the recipe's input value files (a sample rate, a state): every sample edgepack makes up
        carries them, so a file changed in place must invalidate what was measured or learned with it."""
        values = {i.name: i.value for i in self.recipe.model.inputs if i.value is not None}
        return cache_key(sorted((name, sha256_file(Path(path))) for name, path in values.items()))

    @cached_property
    def batch_size(self) -> int:
        return self.recipe.model.inputs[0].shape[0]

    def artifact_path(self, artifact: Artifact) -> Path:
        return self.run_dir / artifact.path

    def artifact_file(self, kind: str, suffix: str) -> Path:
        return self.run_dir / "artifacts" / f"{self.recipe.name}.{kind}{suffix}"

    def open_session(self, artifact: Artifact):
        """One runtime session per artifact per run (loading a model is not free)."""
        from edgepack.converters.runtime import open_session

        if artifact.sha256 not in self._sessions:
            session = open_session(self.artifact_path(artifact))
            # The artifact's own specs carry the layout facts (perm_from_onnx) the raw file cannot.
            session.inputs, session.outputs = artifact.inputs, artifact.outputs
            self._sessions[artifact.sha256] = session
        return self._sessions[artifact.sha256]

    def torch_module(self, artifact: Artifact):
        from edgepack.running.torch_artifacts import module_of

        return module_of(self, artifact)

    def stage_view(self) -> StageView:
        return StageView(self)


class StageView:
    """What a stage may use of the run (stages/base.py ``StageContext``): facts of the recipe, the data, files and
    modules of the artifacts it was given, and records earlier stages handed on."""

    def __init__(self, run: RunContext):
        self._run = run
        recipe = run.recipe
        self.run_dir, self.name, self.model = run.run_dir, recipe.name, recipe.model
        self.task, self.seed, self.verify = str(recipe.task), recipe.seed, recipe.verify
        self.verify_data, self.eval_data, self.batch_size = run.verify_data, run.eval_data, run.batch_size

    def facts_key(self, exports: bool) -> str:
        """Everything of the run a stage can read besides its inputs: part of its cache key (the export settings only
        for a stage that exports: they change how it names tensors)."""
        facts = self._run.recipe.model_dump(mode="json", include={"name", "model", "task", "seed", "verify"})
        settings = _export_settings(self._run.recipe).model_dump(mode="json") if exports else None
        return cache_key(facts, settings, self._run.data_key)

    def artifact_file(self, kind: str, suffix: str) -> Path:
        return self._run.artifact_file(kind, suffix)

    def artifact_path(self, artifact: Artifact) -> Path:
        return self._run.artifact_path(artifact)

    def open_session(self, artifact: Artifact):
        return self._run.open_session(artifact)

    def stage_data(self, source, *, stage: str, key: str, labels: bool = False) -> tuple[ArrayDataset, str]:
        from edgepack.running.data import stage_dataset

        return stage_dataset(self._run.recipe, source, stage=stage, key=key, labels=labels)

    def torch_module(self, artifact: Artifact):
        return self._run.torch_module(artifact)

    def editable_module(self, artifact: Artifact):
        return copy.deepcopy(self._run.torch_module(artifact))

    def save_torch(self, module, *, name: str, stage: str, parent: Artifact, edits: list[dict] = (),
                   **details) -> Artifact:  # fmt: skip
        from edgepack.running.torch_artifacts import save_torch_artifact

        return save_torch_artifact(self._run, module, name=name, stage=stage, parent=parent, edits=edits, **details)

    def torch_outputs(self, module, dataset: ArrayDataset) -> dict[str, np.ndarray]:
        return measure.torch_outputs(module, self._run.recipe, dataset)

    def example_feeds(self) -> dict[str, np.ndarray]:
        from edgepack.converters.verify import pad_batch

        return pad_batch(next(self.verify_data.batches(self.batch_size)), self.batch_size)

    def export_onnx(self, model, out: Path) -> bool:
        """A torch artifact (the loaded .pt2 program itself for the source) or a module, with the recipe's export
        settings (the export stage's, else its defaults); True when the dynamo exporter was used."""
        from edgepack.converters.torch_to_onnx import example_inputs, export_to_onnx

        run, recipe = self._run, self._run.recipe
        if isinstance(model, Artifact):
            as_loaded = model.stage == "load" and run.loaded.exported_program is not None
            model = run.loaded.exported_program if as_loaded else run.torch_module(model)
        settings = _export_settings(recipe)
        # torch.export programs go to the dynamo exporter as they are; TorchScript only exports the legacy way.
        dynamo = settings.exporter == Exporter.DYNAMO and run.loaded.format != ModelFormat.TORCHSCRIPT
        names = [i.name for i in recipe.model.inputs]
        export_to_onnx(model, example_inputs(self.example_feeds(), names), out, input_names=names,
                       output_names=recipe.model.output_names,
                       opset=settings.opset if dynamo else min(settings.opset, 17), dynamo=dynamo)  # fmt: skip
        return dynamo

    def lineage(self, artifact: Artifact) -> list[Artifact]:
        return list(ancestors(self._run.artifacts, artifact))

    def progress(self, done: int, total: int, text: str, milestone: bool = False) -> None:
        self._run.steps.progress(done, total, text, milestone)

    def handoff(self, kind: type[BaseModel], artifact: Artifact):
        record = self._run.handoffs.get(artifact.name, {}).get(kind.__name__)
        return record if isinstance(record, kind) else None


def _export_settings(recipe: Recipe) -> ExportConfig:
    return next((s for s in recipe.stages if s.stage == "export"), None) or ExportConfig()
