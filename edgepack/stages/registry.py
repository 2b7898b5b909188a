"""Stages register themselves by name with their config class; the recipe is built from this registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from edgepack.core.errors import RecipeError, closest_names


@dataclass(frozen=True)
class StageEntry:
    name: str
    config_class: type[BaseModel]
    run: Callable
    torch_only: bool = False  # changes a torch module: needs a torch source it can rebuild (factory or .pt2)


STAGES: dict[str, StageEntry] = {}


def register_stage(name: str, config_class: type[BaseModel], *, torch_only: bool = False):
    """Decorator: ``@register_stage("export", ExportConfig)`` on ``run(config, ctx) -> list[Artifact]``."""

    def decorate(run: Callable) -> Callable:
        if name in STAGES:
            raise ValueError(f"stage {name!r} is registered twice")
        STAGES[name] = StageEntry(name, config_class, run, torch_only)
        return run

    return decorate


def get_stage(name: str) -> StageEntry:
    if name not in STAGES:
        hint = closest_names(name, STAGES)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise RecipeError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}.{did_you_mean}")
    return STAGES[name]
