"""The variants of a sweep: every recipe crossed with every combination of the --grid values.

A grid key is a ``--set`` key (``stages.2.method``, ``bench.runs``): each variant is the recipe with one value per
key applied exactly as ``--set`` applies it, and validated the same way before anything runs, so a bad key or value
fails at once with the same one-line error.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from edgepack.core.artifacts import sha256_file
from edgepack.core.errors import RecipeError, UserError
from edgepack.core.version import __version__
from edgepack.recipe import STAGE_DATA_KEYS, Recipe, load_recipe
from edgepack.running.cache import cache_key

MAX_NAME = 80  # run folder names stay short: Ray and tar paths have length limits


@dataclass
class Variant:
    name: str  # the run folder's name under OUT/variants/
    recipe_path: Path
    overrides: list[str]  # the grid values, as --set texts
    grid: dict[str, object]  # key -> value as given
    recipe: Recipe  # validated, paths resolved
    inputs: dict[str, Path]  # override key -> local file or folder the run reads (model, data, stage data)
    key: str  # the content of everything above: a finished variant with the same key is not run again


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``KEY=v1,v2`` texts -> [(key, [v1, v2])]; a key given twice is refused."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--grid {spec!r}: expected KEY=v1,v2,... e.g. --grid stages.2.method=minmax,percentile")
        if key in grid:
            raise UserError(f"--grid {key} is given twice; give all its values once: --grid {key}=v1,v2")
        grid[key] = [v.strip() for v in values.split(",")]
    return list(grid.items())


def expand(recipe_paths: list[Path], grid: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every recipe x every combination of grid values, each validated as ``edgepack pack --set`` would."""
    if not recipe_paths:
        raise UserError("edgepack sweep needs at least one recipe file")
    variants = []
    for path in recipe_paths:
        for values in itertools.product(*(v for _, v in grid)):
            pairs = [(key, value) for (key, _), value in zip(grid, values, strict=True)]
            variants.append(_variant(Path(path), pairs))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UserError("two variants would share a run folder (the same recipe name and grid values); give each "
                        "recipe a different 'name' and each grid value once")  # fmt: skip
    return variants


def _variant(path: Path, pairs: list[tuple[str, str]]) -> Variant:
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as e:  # the --set parser's message told as the grid's; the recipe's, naming the grid values
        text = str(e)
        raise RecipeError(
            f"--grid {text[6:]}" if text.startswith("--set ") else f"with --grid {' '.join(overrides)}: {text}"
        ) from e
    inputs = input_files(recipe)
    hashes = {key: _content_hash(p) for key, p in sorted(inputs.items())}
    key = cache_key("sweep-variant", sha256_file(path), overrides, hashes, __version__)
    return Variant(name=_folder_name(recipe.name, pairs), recipe_path=path.resolve(), overrides=overrides,
                   grid=dict(pairs), recipe=recipe, inputs=inputs, key=key)  # fmt: skip


def input_files(recipe: Recipe) -> dict[str, Path]:
    """The files a run reads, by the --set key that names them: what a cluster worker must be sent."""
    found = {"model.weights": recipe.model.weights, "model.path": recipe.model.path}
    if recipe.data is not None:
        found["data.path"] = recipe.data.path
    for index, stage in enumerate(recipe.stages):
        for key in STAGE_DATA_KEYS:
            source = getattr(stage, key, None)
            if isinstance(source, Path):
                found[f"stages.{index}.{key}"] = source
            elif source is not None and getattr(source, "path", None) is not None:
                found[f"stages.{index}.{key}.path"] = source.path
    return {key: Path(p) for key, p in found.items() if p is not None}


def _content_hash(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return cache_key(sorted((str(f.relative_to(path)), sha256_file(f)) for f in path.rglob("*") if f.is_file()))
    return "missing"  # the run itself names the missing file


def _folder_name(recipe_name: str, pairs: list[tuple[str, str]]) -> str:
    """recipe name + the grid values (``digits--method=minmax,amount=0.3``); long ones end in a hash instead."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in pairs]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", "--".join([recipe_name, ",".join(parts)]) if parts else recipe_name)
    return name if len(name) <= MAX_NAME else f"{name[: MAX_NAME - 10]}~{cache_key(pairs)[:8]}"
