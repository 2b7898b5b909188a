"""Sweeps on Ray: many recipes x grid values, each variant an ordinary pack run executed as a Ray task.

``sweep("recipe.yaml", grid=["stages.2.method=minmax,entropy"], out="runs/sweep")`` (also ``edgepack.sweep``) returns a
``SweepResult`` (the content of sweep.json); ``edgepack sweep`` is the same on the command line. Ray is an optional
extra (``pip install 'edgepack[ray]'``) and is imported only when a sweep runs: ``import edgepack`` never loads it.
"""

from __future__ import annotations

from pathlib import Path


def sweep(
    recipes: str | Path | list[str | Path],
    grid: list[str] | dict[str, list] = (),
    *,
    out: str | Path | None = None,
    address: str | None = None,
    max_parallel: int | None = None,
    num_cpus: int | None = None,
    quiet: bool = False,
):
    """Run every recipe with every combination of the grid's values (``KEY=v1,v2`` texts, or {key: [values]}, keys as
    for ``--set``); finished variants of an earlier sweep into ``out`` are not run again. Without ``address`` a local
    Ray instance of ``num_cpus`` (default: every core) runs them; with one (auto, HOST:PORT, ray://HOST:PORT) the
    cluster does, the recipe and its files shipped by content."""
    from edgepack.core.errors import UserError
    from edgepack.sweeps.runner import run_sweep
    from edgepack.sweeps.variants import expand, parse_grid

    paths = [Path(recipes)] if isinstance(recipes, str | Path) else [Path(p) for p in recipes]
    specs = [f"{k}={','.join(map(str, v))}" for k, v in grid.items()] if isinstance(grid, dict) else list(grid)
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel {max_parallel}: give at least 1 (variants run at once)")
    variants = expand(paths, parse_grid(specs))
    folder = Path(out) if out is not None else Path("runs") / f"{variants[0].recipe.name}-sweep"
    return run_sweep(variants, folder, address=address, max_parallel=max_parallel, num_cpus=num_cpus, quiet=quiet)
