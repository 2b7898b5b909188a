"""``edgepack sweep``: the command line of edgepack.sweeps.sweep (registered in edgepack/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sweep_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="KEY=v1,v2: one variant per value (keys as for --set); repeat to cross keys."),
    ] = None,
    recipes: Annotated[str | None, typer.Option(help="More recipes, a.yaml,b.yaml: each gets the same grid.")] = None,
    address: Annotated[
        str | None, typer.Option(help="A Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a local Ray).")
    ] = None,
    max_parallel: Annotated[int | None, typer.Option(help="Variants running at once (default: the CPUs).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Sweep folder (default runs/NAME-sweep).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the summary.")] = False,
):
    r"""Pack every variant (recipes x grid values) as Ray tasks; write sweep.json and sweep.html (Pareto front, best
    variant per gate budget). Needs Ray: pip install 'edgepack\[ray]'."""
    from edgepack.sweeps import sweep

    paths = [recipe] + [Path(p.strip()) for p in (recipes or "").split(",") if p.strip()]
    result = sweep(paths, grid or [], out=out_dir, address=address, max_parallel=max_parallel, quiet=quiet)
    counts = result.summary["counts"]
    print(f"{counts['ok']} of {len(result.variants)} variants finished, {counts['failed']} failed; "
          f"{result.out / 'sweep.json'}, {result.out / 'sweep.html'}")  # fmt: skip
    for row in result.variants:
        if row["status"] != "ok":
            print(f"  {row['name']}: {row['status']}: {row['error']}")
    if counts["failed"]:
        raise typer.Exit(1)
