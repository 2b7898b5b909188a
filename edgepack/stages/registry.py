"""Stages by name. The registry maps a name to the module that defines the stage, imported only when a recipe names
the stage (as Olive does), so reading a recipe never loads torch or TensorFlow."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from edgepack.core.errors import RecipeError, closest_names
from edgepack.stages.base import Selector, StageConfig

# Built-in stages, in pipeline order: name -> the module that registers it.
BUILT_IN_STAGES = {
    "prune": "edgepack.stages.prune",
    "low_rank": "edgepack.stages.low_rank",
    "finetune": "edgepack.stages.finetune",
    "qat": "edgepack.stages.qat",
    "export": "edgepack.stages.export",
    "convert": "edgepack.stages.convert",
    "quantize": "edgepack.stages.quantize",
}


@dataclass(frozen=True)
class Measurement:
    """A figure a stage asks for on each artifact it made: ``measure(ctx, artifact)`` -> a JSON-able value, or None
    where it does not apply. The pipeline runs it after verification and caches it; ``code`` names the modules whose
    source is part of its cache key (what computes the figure)."""

    measure: Callable[..., object]
    code: tuple[str, ...] = ()

    def code_hash(self) -> str:
        import hashlib

        modules = [importlib.import_module(name) for name in (self.measure.__module__, *self.code)]
        return hashlib.sha256(b"".join(open(m.__file__, "rb").read() for m in modules)).hexdigest()[:24]


@dataclass(frozen=True)
class StageEntry:
    name: str
    config_class: type[StageConfig]
    run: Callable
    reads: Selector  # which artifacts made so far the stage reads: its inputs, and its cache key
    torch_only: bool = False  # changes a torch module: needs a torch source it can rebuild (factory or .pt2)
    measurements: dict[str, Measurement] = field(default_factory=dict)
    exports: bool = False  # calls ctx.export_onnx: the recipe's export settings are part of its cache key


_REGISTERED: dict[str, StageEntry] = {}


def register_stage(name: str, config_class: type[StageConfig], *, reads: Selector, torch_only: bool = False,
                   measurements: dict[str, Measurement] | None = None, exports: bool = False):  # fmt: skip
    """Decorator: ``@register_stage("export", ExportConfig, reads=latest_torch)`` on
    ``run(config, inputs, ctx) -> StageOutput``."""

    def decorate(run: Callable) -> Callable:
        if name in _REGISTERED:
            raise ValueError(f"stage {name!r} is registered twice")
        _REGISTERED[name] = StageEntry(name, config_class, run, reads, torch_only, measurements or {}, exports)
        return run

    return decorate


def stage_names() -> list[str]:
    return list(dict.fromkeys([*BUILT_IN_STAGES, *_REGISTERED]))


def get_stage(name: str) -> StageEntry:
    if name not in _REGISTERED and name in BUILT_IN_STAGES:
        importlib.import_module(BUILT_IN_STAGES[name])
    if name not in _REGISTERED:
        hint = closest_names(name, stage_names())
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise RecipeError(f"unknown stage {name!r}; known stages: {', '.join(stage_names())}.{did_you_mean}")
    return _REGISTERED[name]
