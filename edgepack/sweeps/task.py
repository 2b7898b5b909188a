"""One variant, as a Ray task: an ordinary pack run, its benchmarks taking turns with the other variants'.

Runs inside a Ray worker (``ray`` is imported only there). On the machine of the sweep the run writes straight into
the sweep's folder; on a cluster the recipe and its files arrive as bytes (Ray's object store), are written into a
work folder of the node, and the finished run folder goes back as the bytes of a tar file.
"""

from __future__ import annotations

import io
import resource
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgepack.core.errors import EdgepackError

RECIPE_FILE = "recipe.yaml"
# One per machine: every worker of every Ray node there takes turns on it (two nodes on one machine share its cores).
HOST_BENCH_LOCK = Path(tempfile.gettempdir()) / "edgepack-bench-host.lock"


@dataclass
class TaskSpec:
    name: str
    key: str
    overrides: list[str]
    recipe_path: str | None = None  # on this machine: the recipe where it is
    run_dir: str | None = None  # on this machine: the sweep's run folder of the variant
    shipped: list[tuple[str, str, bool]] = field(default_factory=list)  # (override key, file name, is a folder)
    serialise_host_benches: bool = True  # through this machine's lock file (running/bench_guard.py)
    tracker: object = None  # the sweep's Tracker actor: which node runs what, for the progress bar


def run_variant(spec: TaskSpec, recipe_bytes: bytes | None = None, *blobs: bytes) -> tuple[dict, bytes | None]:
    """(the variant's record, the run folder as tar bytes when the inputs were shipped)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if spec.tracker is not None:
        spec.tracker.started.remote(spec.name, node)
    record = {"name": spec.name, "node_id": node, "started": time.time()}
    try:
        if recipe_bytes is None:
            record |= _pack(spec, Path(spec.recipe_path), Path(spec.run_dir), spec.overrides)
            return record, None
        work = Path(tempfile.gettempdir()) / "edgepack-sweep" / spec.key[:16]
        recipe, overrides = _unpack_inputs(spec, work / "inputs", recipe_bytes, blobs)
        record |= _pack(spec, recipe, work / "run", overrides)
        return record, tar_folder(work / "run") if record["status"] == "ok" else None
    finally:
        record["finished"] = time.time()
        record["worker_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if spec.tracker is not None:
            spec.tracker.finished.remote(spec.name)


def _pack(spec: TaskSpec, recipe: Path, run_dir: Path, overrides: list[str]) -> dict:
    from edgepack.reports.sweep_summary import variant_figures
    from edgepack.running.bench_guard import benches_serialised
    from edgepack.running.pipeline import pack

    lock = HOST_BENCH_LOCK if spec.serialise_host_benches else None
    with benches_serialised(lock) as guard:
        try:
            result = pack(recipe, out=run_dir, overrides=overrides, quiet=True)
        except Exception as e:  # one failed variant is recorded and the sweep goes on
            return {"status": "failed", "error": one_line_error(e), "benches": guard.windows}
    return {"status": "ok", "all_cached": bool(result.results.get("all_cached")), "benches": guard.windows,
            **variant_figures(result.results)}  # fmt: skip


def one_line_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, EdgepackError) else f"{type(error).__name__}: {text}"


def _unpack_inputs(spec: TaskSpec, folder: Path, recipe_bytes: bytes, blobs: tuple[bytes, ...]):
    """Write the shipped recipe and files into ``folder``; the overrides then point the recipe at those copies."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / RECIPE_FILE
    recipe.write_bytes(recipe_bytes)
    overrides = list(spec.overrides)
    for (key, name, is_folder), data in zip(spec.shipped, blobs, strict=True):
        local = folder / name
        if is_folder:
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                archive.extractall(local, filter="data")
        else:
            local.write_bytes(data)
        overrides.append(f"{key}={local}")
    return recipe, overrides


def tar_folder(folder: Path) -> bytes:
    """A folder as the bytes of a tar file: a run folder coming back, a data folder (images/) being shipped."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:  # hard-linked cache blobs are stored once
        archive.add(folder, arcname=".")
    return buffer.getvalue()
