"""What running a sweep on Ray buys on this machine, and what it costs.

    .venv/bin/python benchmarks/sweep_scaling.py [--variants 4 8] [--num-cpus 2] [--full]

The bundled digits CNN (trained once, seconds), packed with the grid model.weights over N scaled copies of its
weights (each variant its own files): export (legacy exporter) + verify + accuracy + a short host bench, or with
--full the bundled recipe (export, TFLite conversion, int8 quantization). For each N, in fresh folders:
- serial: every variant packed one after the other in this process (``edgepack.pack``; imports paid once);
- ray: ``edgepack.sweep`` on a local Ray of ``--num-cpus`` (Ray start-up and worker imports included);
- ray, one at a time: the same with --max-parallel 1: its wall time minus serial's, over N, is what Ray adds per
  variant (task dispatch, worker start and imports, shipping records; start-up spread over N).
Also printed: the peak RSS of a Ray worker that ran variants (ru_maxrss, from the sweep's records) and Ray's start-up
time. Host benchmarks of concurrent variants take turns, so they count once per variant in every mode. Nothing is
asserted; on a shared 2-core machine expect at most ~1.5-2x.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the bundled recipe (TFLite + int8) per variant")
    args = parser.parse_args()
    os.chdir(REPO)  # the Ray workers import this checkout
    with tempfile.TemporaryDirectory(prefix="sweep_scaling-") as folder:
        recipe, weights = _inputs(Path(folder), max(args.variants), args.full)
        print(f"{'variants':>8} {'serial s':>9} {'ray s':>7} {'speed-up':>8} {'ray 1-at-a-time s':>17} "
              f"{'Ray s/variant':>13} {'worker MiB':>10}")  # fmt: skip
        for count in args.variants:
            grid = ["model.weights=" + ",".join(str(w) for w in weights[:count])]
            serial = _serial(recipe, weights[:count], Path(folder) / f"serial{count}")
            ray_wall, rows = _sweep(recipe, grid, Path(folder) / f"ray{count}", args.num_cpus, None)
            one_wall, _ = _sweep(recipe, grid, Path(folder) / f"one{count}", args.num_cpus, 1)
            worker = max(r["worker_peak_rss_mib"] or 0 for r in rows)
            print(f"{count:>8} {serial:>9.1f} {ray_wall:>7.1f} {serial / ray_wall:>7.2f}x {one_wall:>17.1f} "
                  f"{(one_wall - serial) / count:>13.2f} {worker:>10.0f}")  # fmt: skip
        print(f"Ray start-up (init to first task scheduled): {_startup(args.num_cpus):.1f} s")


def _inputs(folder: Path, count: int, full: bool) -> tuple[Path, list[Path]]:
    import torch
    import yaml

    from edgepack.examples import digits

    trained = folder / "digits.pt"
    digits.train(trained)
    state = torch.load(trained, weights_only=True)
    weights = []
    for index in range(count):
        scale = 1.0 - 0.05 * index
        path = folder / f"w{index}.pt"
        torch.save({k: v * scale if v.is_floating_point() else v for k, v in state.items()}, path)
        weights.append(path)
    recipe = yaml.safe_load(digits.RECIPE.read_text())
    if not full:
        recipe["stages"] = [{"stage": "export", "exporter": "legacy"}]
        recipe["bench"] = {"runs": 50, "warmup": 5, "min_seconds": 0.2, "threads": 1}
    recipe["model"]["weights"] = str(trained)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, weights


def _serial(recipe: Path, weights: list[Path], out: Path) -> float:
    from edgepack.running.pipeline import pack

    started = time.perf_counter()
    for index, path in enumerate(weights):
        pack(recipe, out=out / str(index), overrides=[f"model.weights={path}"], quiet=True)
    return time.perf_counter() - started


def _sweep(recipe: Path, grid: list[str], out: Path, num_cpus: int, max_parallel: int | None) -> tuple[float, list]:
    import edgepack

    started = time.perf_counter()
    result = edgepack.sweep(recipe, grid, out=out, num_cpus=num_cpus, max_parallel=max_parallel, quiet=True)
    wall = time.perf_counter() - started
    failed = [r for r in result.variants if r["status"] != "ok"]
    if failed:
        sys.exit(f"variant failed: {failed[0]['name']}: {failed[0]['error']}")
    return wall, result.variants


def _startup(num_cpus: int) -> float:
    import ray

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="epray-", dir="/tmp") as temp:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
        ray.get(ray.remote(lambda: None).remote())
        wall = time.perf_counter() - started
        ray.shutdown()
    return wall


if __name__ == "__main__":
    main()
