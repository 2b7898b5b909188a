"""The recipe: what to pack, how, and where to measure it. YAML in, YAML out, unknown keys rejected.

Relative paths in a recipe are resolved against the folder of the recipe file.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from edgepack.calibration.data_config import DataConfig
from edgepack.converters.verify import IntegerTolerance
from edgepack.core.config import Strict  # noqa: F401  (re-exported)
from edgepack.core.errors import RecipeError, UserError
from edgepack.device_bench import BenchOptions, parse_target
from edgepack.recipe_errors import describe_validation_error
from edgepack.reports.gate import GateConfig
from edgepack.running.robustness import RobustnessConfig
from edgepack.stages.base import StageConfig
from edgepack.stages.registry import get_stage, stage_names


class ModelFormat(StrEnum):
    TORCH = "torch"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"
    ONNX = "onnx"
    TFLITE = "tflite"  # described, benched and reported as it is; never re-converted or re-quantized


SUFFIX_FORMATS = {
    ".onnx": ModelFormat.ONNX,
    ".pt2": ModelFormat.TORCH_EXPORT,
    ".ts": ModelFormat.TORCHSCRIPT,
    ".pt": ModelFormat.TORCHSCRIPT,
    ".pth": ModelFormat.TORCHSCRIPT,
    ".tflite": ModelFormat.TFLITE,
}


class InputSpec(Strict):
    name: str = Field(description="Input name in the exported model (ONNX input name, TFLite signature key).")
    shape: list[int] = Field(
        description="Exact static shape in the torch/ONNX layout, e.g. [1, 3, 224, 224]; [] for a scalar."
    )
    dtype: Literal["float32", "int64", "int32"] = Field("float32", description="Element type of the input.")
    batch_axis: int | None = Field(
        0,
        description="Which axis of 'shape' holds the batch (1 for a [2, batch, 128] state); null for an input "
        "without one (a scalar is never batched). Data files hold one row per sample along the batch axis, moved "
        "first: a [2, 1, 128] state with batch_axis 1 is stored as [N, 2, 128], a scalar as [N].",
    )
    value: Path | None = Field(
        None,
        description="A .npy file with this input's value, fed in every sample edgepack makes up (verification "
        "without data, benchmarks on the host) where random ones are meaningless (a sample rate, an initial state).",
    )

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: list[int]) -> list[int]:
        if any(d <= 0 for d in shape):
            raise ValueError(f"every dimension must be a positive integer, got {shape}")
        return shape

    @model_validator(mode="after")
    def _batch_axis_in_shape(self) -> InputSpec:
        if not self.shape and self.batch_axis == 0:
            self.batch_axis = None  # A scalar has no batch axis; 0 is only the default for tensors.
        if self.batch_axis is not None and not 0 <= self.batch_axis < len(self.shape):
            raise ValueError(f"batch_axis {self.batch_axis} of input {self.name!r} is not an axis of its shape "
                             f"{self.shape}; give 0..{len(self.shape) - 1}, or null when it has none")  # fmt: skip
        return self

    @property
    def sample_shape(self) -> list[int]:
        """The shape with the batch axis first (a leading 1 for an input without one): how data files stack it."""
        if self.batch_axis is None:
            return [1, *self.shape]
        rest = [d for axis, d in enumerate(self.shape) if axis != self.batch_axis]
        return [self.shape[self.batch_axis], *rest]


class ModelConfig(Strict):
    factory: str | None = Field(
        None, description="'package.module:callable' returning a torch.nn.Module; weights load into it."
    )
    weights: Path | None = Field(None, description="state_dict file for the factory's module (loaded weights-only).")
    path: Path | None = Field(
        None,
        description="A TorchScript (.pt/.ts), torch.export (.pt2), ONNX (.onnx) or TFLite (.tflite) file; a "
        ".tflite is benched and reported as it is (no stages).",
    )
    format: ModelFormat | None = Field(None, description="Format of 'path'; inferred from its suffix when omitted.")
    inputs: list[InputSpec] = Field(
        description="The model's inputs, in call order, in the torch/ONNX layout; for a .tflite from another tool, "
        "in that file's own layout (it carries no record of an ONNX one)."
    )
    output_names: list[str] = Field(["output"], description="Names given to the exported model's outputs.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.factory is None) == (self.path is None):
            raise ValueError("give exactly one of 'factory' (a torch module factory) or 'path' (a model file)")
        if self.weights is not None and self.factory is None:
            raise ValueError("'weights' goes with 'factory'; a model file at 'path' carries its own weights")
        if self.path is not None and self.format is None:
            self.format = SUFFIX_FORMATS.get(self.path.suffix.lower())
            if self.format is None:
                raise ValueError(
                    f"cannot tell the format of {self.path} from its suffix; set 'format' to one of "
                    f"{', '.join(f.value for f in ModelFormat if f != ModelFormat.TORCH)}"
                )
        if self.factory is not None:
            self.format = ModelFormat.TORCH
        return self


class Task(StrEnum):
    CLASSIFICATION = "classification"
    OTHER = "other"


class VerifyConfig(Strict):
    samples: int = Field(32, gt=0, description="Held-out samples each artifact is compared on against the reference.")
    float_tolerance: float = Field(
        1e-4, gt=0, description="Float artifacts: allowed max abs error as a fraction of the reference output range."
    )
    integer_tolerance: IntegerTolerance = Field(
        default_factory=IntegerTolerance,
        description="int8 and int16x8 artifacts: {min_cosine: 0.99, min_top1_agreement: 0.9} against the reference; "
        "outside it the file is removed and the run fails, naming the layers where the error starts.",
    )


def default_stages() -> list[StageConfig]:
    return [get_stage(name).config_class(stage=name) for name in ("export", "convert")]


NAME_PATTERN = re.compile(r"[^./\\\x00-\x1f][^/\\\x00-\x1f]*")  # one file-name part: no folders, not hidden


class Recipe(Strict):
    name: str = Field("model", description="Short name of the model; used in file names and reports.")
    model: ModelConfig
    task: Task = Field(Task.CLASSIFICATION, description="'classification' adds top-1 accuracy and agreement.")
    labels: list[str] | None = Field(None, description="Class names, index order; copied to the manifest.")
    data: DataConfig | None = Field(None, description="Evaluation data; without it, random inputs verify only.")
    stages: list[SerializeAsAny[StageConfig]] = Field(
        default_factory=default_stages, description="Stages in order, e.g. [{stage: export}, {stage: convert}]."
    )
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="How artifacts are checked.")
    bench: BenchOptions | None = Field(default_factory=BenchOptions, description="Host benchmark; null skips it.")
    targets: list[str] = Field(
        ["host"], description="Where to benchmark: 'host', 'ssh://user@host[:port]', 'adb://SERIAL'; one record each."
    )
    seed: int = Field(0, description="Seed for every random choice (sample selection, random inputs).")
    robustness: RobustnessConfig | None = Field(
        default_factory=RobustnessConfig,
        description="Top-1 under input noise and brightness/contrast shifts (classification with labelled data); "
        "null skips it.",
    )
    gate: GateConfig | None = Field(
        None, description="Budgets checked at the end of pack; 'edgepack pack' exits 1 when one is violated."
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                "a recipe name is a plain file-name part (no '/' or '\\', not starting with '.'), as it names the "
                "run's files, e.g. mobilenet_v3"
            )
        return name

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        if not targets or len(set(targets)) != len(targets):
            raise ValueError("'targets' must name at least one target, each once, e.g. [host, ssh://pi@raspberrypi]")
        for target in targets:
            try:
                parse_target(target)
            except UserError as e:  # pydantic turns a ValueError into the recipe error naming the key
                raise ValueError(str(e)) from e
        return targets

    @model_validator(mode="after")
    def _tflite_source_runs_no_stages(self) -> Recipe:
        if self.model.format != ModelFormat.TFLITE:
            return self
        if "stages" in self.model_fields_set and self.stages:
            raise ValueError(
                f"model.path {self.model.path} is a .tflite file: it is verified, measured and benched as it is, "
                "never re-converted or re-quantized; remove 'stages' (or start from the torch or ONNX model)"
            )
        self.stages = []
        return self

    @model_validator(mode="after")
    def _torch_stages_need_a_torch_source(self) -> Recipe:
        torch_only = [s.stage for s in self.stages if get_stage(s.stage).torch_only]
        if torch_only and self.model.format not in (ModelFormat.TORCH, ModelFormat.TORCH_EXPORT):
            raise ValueError(
                f"stages {torch_only} change a torch module, but model.format is {self.model.format}; give the model "
                "as model.factory + model.weights (or a torch.export .pt2 file), or remove those stages"
            )
        return self

    @model_validator(mode="after")
    def _onnx_stages_after_export(self) -> Recipe:
        if self.model.format in (ModelFormat.ONNX, ModelFormat.TFLITE):
            return self
        names = [s.stage for s in self.stages]
        for i, name in enumerate(names):
            if name in ONNX_READERS and "export" not in names[:i]:
                raise ValueError(
                    f"stages[{i}] ({name}) reads an ONNX model, but model.format is {self.model.format} and no export "
                    f"stage comes before it; put {{stage: export}} before it, e.g. stages: [export, {name}]"
                )
        return self

    @model_validator(mode="after")
    def _qat_and_quantize_agree(self) -> Recipe:
        qat = next((s for s in self.stages if s.stage == "qat"), None)
        if qat is None:
            return self
        after = self.stages[self.stages.index(qat) + 1 :]
        for i, stage in enumerate(after, start=self.stages.index(qat) + 1):
            if stage.stage == "quantize" and stage.precision != qat.precision:
                raise ValueError(
                    f"the qat stage trains {qat.precision} but stages[{i}] (quantize) asks for {stage.precision}; "
                    "set the same precision in both"
                )
        return self

    @field_validator("stages", mode="before")
    @classmethod
    def _stages_from_registry(cls, items: Any) -> list[StageConfig]:
        if not isinstance(items, list):
            raise ValueError("'stages' must be a list like [{stage: export}, {stage: convert}]")
        return [_stage_config(i, item) for i, item in enumerate(items)]


def _stage_config(index: int, item: Any) -> StageConfig:
    if isinstance(item, StageConfig):
        return item
    if isinstance(item, str):
        item = {"stage": item}
    if not isinstance(item, dict) or "stage" not in item:
        known = ", ".join(stage_names())
        raise ValueError(f"stages[{index}] must be a mapping with a 'stage' key; known stages: {known}")
    entry = get_stage(str(item["stage"]))
    try:
        return entry.config_class.model_validate(item)
    except ValidationError as e:
        raise RecipeError(describe_validation_error(e, f"stages[{index}] ({entry.name})", entry.config_class)) from e


def parse_recipe(data: dict, *, source: str = "recipe", base_dir: Path | None = None) -> Recipe:
    """Validate a recipe mapping; relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: a recipe is a mapping of keys (name, model, data, ...), got {type(data).__name__}"
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(describe_validation_error(e, source, Recipe)) from e
    return resolve_paths(recipe, base_dir) if base_dir else recipe


def resolve_paths(recipe: Recipe, base_dir: Path) -> Recipe:
    def resolve(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base_dir / p).resolve()

    inputs = [i.model_copy(update={"value": resolve(i.value)}) for i in recipe.model.inputs]
    model = recipe.model.model_copy(
        update={"weights": resolve(recipe.model.weights), "path": resolve(recipe.model.path), "inputs": inputs}
    )
    data = recipe.data.model_copy(update={"path": resolve(recipe.data.path)}) if recipe.data else None
    stages = [_resolve_stage_paths(stage, resolve) for stage in recipe.stages]
    bench = (
        recipe.bench.model_copy(update={k: resolve(getattr(recipe.bench, k)) for k in BENCH_PATHS})
        if recipe.bench
        else None
    )
    return recipe.model_copy(update={"model": model, "data": data, "stages": stages, "bench": bench})


BENCH_PATHS = ("ssh_identity_file", "ssh_known_hosts", "benchmark_model")  # relative to the recipe, as the rest


STAGE_DATA_KEYS = ("calibration_data", "train_data")
ONNX_READERS = ("quantize",)  # stages that read an exported ONNX model: after an export stage on a torch source


def _resolve_stage_paths(stage: StageConfig, resolve) -> StageConfig:
    """A stage's own data (calibration_data, train_data) is relative to the recipe too."""
    for key in STAGE_DATA_KEYS:
        source = getattr(stage, key, None)
        if isinstance(source, Path):
            stage = stage.model_copy(update={key: resolve(source)})
        elif isinstance(source, DataConfig) and source.path is not None:
            stage = stage.model_copy(update={key: source.model_copy(update={"path": resolve(source.path)})})
    return stage


def load_recipe(path: Path, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe file, apply ``key=value`` overrides, validate."""
    data = read_recipe_yaml(Path(path)) or {}
    for text in overrides:
        apply_override(data, text)
    return parse_recipe(data, source=str(path), base_dir=Path(path).parent.resolve())


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the safe loader's own check names an unhashable key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise RecipeError(
                    f"{self.name}: key {key!r} is given twice (lines {seen[key]} and {line}); keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_recipe_yaml(path: Path) -> Any:
    if path.is_dir():
        raise RecipeError(f"recipe file {path} is a directory; give the recipe's YAML file, e.g. {path}/recipe.yaml")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe file {path} is not a text (UTF-8) file: byte {e.start} cannot be decoded") from e
    try:
        return yaml.load(text, Loader=_loader(path))  # safe: a yaml.SafeLoader subclass (refuses duplicate keys)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from e


def _loader(path: Path):
    def make(stream):
        loader = _UniqueKeyLoader(stream)
        loader.name = str(path)
        return loader

    return make


def apply_override(data: dict, text: str) -> None:
    """Apply one ``--set dotted.key=value`` (value parsed as YAML; list items by index: stages.0.opset=17)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {text!r}: expected key=value, e.g. bench.runs=20")
    *parents, leaf = key.split(".")
    node: Any = data
    for depth, part in enumerate(parents):
        node = _child(node, part, key, parents[: depth + 1])
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(node, list):
        node[_index(node, leaf, key)] = value
    else:
        node[leaf] = value


def _child(node: Any, part: str, key: str, path: list[str]) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {key}: {part!r} is inside a value that is not a mapping")
    if node.get(part) is None:  # absent or null in the recipe: start the section from its defaults
        node[part] = {}
    child = node[part]
    if not isinstance(child, dict | list):
        where = ".".join(path)
        raise RecipeError(f"--set {key}: {where!r} is {child!r} in the recipe, not a section with keys; "
                          f"set it whole, e.g. --set {where}=VALUE")  # fmt: skip
    return child


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"--set {key}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def recipe_to_yaml(recipe: Recipe) -> str:
    data = recipe.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
