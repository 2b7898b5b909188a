"""The sweep's driver: skip what is done, submit the rest as Ray tasks, collect, write sweep.json and sweep.html.

Scheduling: each variant is one task of one CPU (``--max-parallel`` bounds how many are submitted at once); a
variant that benchmarks on a device (ssh://, adb://) also holds that device's resource (capacity 1), for the whole
run, so two variants never time on one device at once; host benchmarks take turns through a lock file per machine
(running/bench_guard.py), held only while timing, so compression and calibration of other variants go on.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.core.artifacts import write_text_atomic
from edgepack.core.errors import UserError
from edgepack.reports.sweep_summary import sweep_summary, variant_figures
from edgepack.sweeps.progress import SweepProgress
from edgepack.sweeps.ray_session import device_resources, ray_session
from edgepack.sweeps.task import TaskSpec, one_line_error, run_variant, tar_folder
from edgepack.sweeps.variants import Variant

VARIANT_RECORD = "sweep-variant.json"  # in a finished variant's run folder: its key and record, for a re-run


@dataclass
class SweepResult:
    out: Path
    summary: dict  # the content of sweep.json

    @property
    def variants(self) -> list[dict]:
        return self.summary["variants"]


class SweepInterrupted(UserError):
    pass


def run_sweep(variants: list[Variant], out: Path, *, address: str | None = None, max_parallel: int | None = None,
              num_cpus: int | None = None, serialise_host_benches: bool = True,
              quiet: bool = False) -> SweepResult:  # fmt: skip
    out = Path(out).resolve()
    (out / "variants").mkdir(parents=True, exist_ok=True)
    rows = {v.name: _finished_before(out, v) for v in variants}
    todo = [v for v in variants if rows[v.name] is None]
    with SweepProgress(len(variants), quiet) as progress:
        for row in rows.values():
            if row is not None:
                progress.finished(row)
        if todo:
            devices = {name: 1.0 for v in todo for name in resources_for(v)}
            with ray_session(address, num_cpus, devices) as ray:
                driver = _Driver(ray, out, address is not None, serialise_host_benches, progress)
                try:
                    driver.run(todo, max_parallel or max(1, int(ray.cluster_resources().get("CPU", 1))), rows)
                except KeyboardInterrupt:
                    driver.cancel(rows)
                    _write_outputs(out, variants, rows)
                    finished = sum(r is not None and r["status"] != "cancelled" for r in rows.values())
                    raise SweepInterrupted(f"sweep interrupted: {finished} of {len(variants)} variants finished, the "
                                           "rest cancelled; run the same command again to resume (finished variants "
                                           "are not run again)") from None  # fmt: skip
    return SweepResult(out, _write_outputs(out, variants, rows))


def resources_for(variant: Variant) -> dict[str, float]:
    """The Ray resources a variant holds besides its CPU: one per device target it benchmarks on."""
    return device_resources(variant.recipe.targets) if variant.recipe.bench is not None else {}


class _Driver:
    def __init__(self, ray, out: Path, ship: bool, serialise: bool, progress: SweepProgress):
        self.ray, self.out, self.ship, self.serialise, self.progress = ray, out, ship, serialise, progress
        self.remote = ray.remote(run_variant)
        self.tracker = _tracker_class(ray).remote()
        self.pending: dict = {}  # ObjectRef -> Variant
        self.shipped: dict[Path, object] = {}  # file -> ObjectRef of its bytes, put once for every variant
        self.node_ips: dict[str, str] = {}

    def run(self, todo: list[Variant], max_parallel: int, rows: dict) -> None:
        queue = list(todo)
        while queue or self.pending:
            while queue and len(self.pending) < max_parallel:
                variant = queue.pop(0)
                self.pending[self._submit(variant)] = variant
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.5)
            for ref in ready:
                variant = self.pending.pop(ref)
                rows[variant.name] = self._collect(ref, variant)
                self.progress.finished(rows[variant.name])
            self.progress.running(self.ray.get(self.tracker.per_node.remote()))

    def cancel(self, rows: dict) -> None:
        """Ctrl-C: each running task gets KeyboardInterrupt (its run folder's cache keeps what it finished)."""
        for ref, variant in self.pending.items():
            self.ray.cancel(ref)
            rows[variant.name] = _row(variant, {"status": "cancelled", "error": "cancelled (Ctrl-C)"})

    def _submit(self, variant: Variant):
        spec = TaskSpec(name=variant.name, key=variant.key, overrides=variant.overrides, tracker=self.tracker,
                        serialise_host_benches=self.serialise)  # fmt: skip
        options = {
            "num_cpus": 1,
            "resources": resources_for(variant),
            "max_retries": 0,
            "scheduling_strategy": "SPREAD",
        }
        if not self.ship:
            spec.recipe_path, spec.run_dir = str(variant.recipe_path), str(self.out / "variants" / variant.name)
            return self.remote.options(**options).remote(spec)
        spec.shipped = [
            (key, f"{i}-{path.name}", path.is_dir()) for i, (key, path) in enumerate(variant.inputs.items())
        ]
        blobs = [self._put(path) for path in variant.inputs.values()]
        return self.remote.options(**options).remote(spec, self._put(variant.recipe_path), *blobs)

    def _node_ip(self, node_id: str) -> str | None:
        """The address the node was started with (two nodes of one machine share its IP but not their ids)."""
        if node_id not in self.node_ips:
            self.node_ips = {n["NodeID"]: n["NodeManagerAddress"] for n in self.ray.nodes()}
        return self.node_ips.get(node_id)

    def _put(self, path: Path):
        if path not in self.shipped:
            data = tar_folder(path) if path.is_dir() else path.read_bytes()
            self.shipped[path] = self.ray.put(data)
        return self.shipped[path]

    def _collect(self, ref, variant: Variant) -> dict:
        try:
            record, run_tar = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the worker died (out of memory, a native crash), or cancelled
            return _row(variant, {"status": "failed", "error": one_line_error(e)})
        row = _row(variant, record | {"node_ip": self._node_ip(record["node_id"])})
        if run_tar is not None:
            _unpack_run(run_tar, self.out / "variants" / variant.name)
        if row["status"] == "ok":
            write_text_atomic(self.out / "variants" / variant.name / VARIANT_RECORD,
                              json.dumps({"key": variant.key, "row": row}, indent=1))  # fmt: skip
        return row


def _tracker_class(ray):
    @ray.remote(num_cpus=0)
    class Tracker:
        """Which node runs which variant now: the tasks tell it when they start and end."""

        def __init__(self):
            self.nodes: dict[str, str] = {}

        def started(self, name: str, node: str) -> None:
            self.nodes[name] = node

        def finished(self, name: str) -> None:
            self.nodes.pop(name, None)

        def per_node(self) -> dict[str, int]:
            counts: dict[str, int] = {}
            for node in self.nodes.values():
                counts[node] = counts.get(node, 0) + 1
            return counts

    return Tracker


def _row(variant: Variant, record: dict) -> dict:
    """A sweep.json row: the variant, where and when it ran, its benchmarks' windows, its figures."""
    benches = record.get("benches") or []
    return {
        "name": variant.name, "recipe": str(variant.recipe_path), "grid": variant.grid,
        "run_dir": f"variants/{variant.name}",
        "status": record["status"], "error": record.get("error"),
        "node_id": record.get("node_id"), "node_ip": record.get("node_ip"),
        "started": record.get("started"), "finished": record.get("finished"),
        "bench_started": min((b["started"] for b in benches), default=None),
        "bench_finished": max((b["finished"] for b in benches), default=None),
        "benches": benches, "worker_peak_rss_mib": record.get("worker_peak_rss_mib"),
        "all_cached": record.get("all_cached"), "skipped": False,
        **{key: record.get(key) for key in ("source_top1", "gate", "artifacts")},
    }  # fmt: skip


def _finished_before(out: Path, variant: Variant) -> dict | None:
    """The row of a variant this sweep folder finished with the same inputs (recipe, grid values, files, version)."""
    folder = out / "variants" / variant.name
    try:
        saved = json.loads((folder / VARIANT_RECORD).read_text())
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != variant.key:
        return None
    return saved["row"] | variant_figures(results) | {"skipped": True}


def _unpack_run(data: bytes, folder: Path) -> None:
    """The run folder a cluster node sent back replaces the variant's folder here (unpacked beside it first)."""
    incoming = folder.with_name(f".{folder.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(incoming, filter="data")
    shutil.rmtree(folder, ignore_errors=True)
    incoming.rename(folder)


def _write_outputs(out: Path, variants: list[Variant], rows: dict) -> dict:
    from edgepack.reports.sweep_page import render_sweep_html

    ordered = [rows[v.name] or _row(v, {"status": "cancelled", "error": "not started"}) for v in variants]
    summary = sweep_summary(ordered)
    write_text_atomic(out / "sweep.json", json.dumps(summary, indent=1))
    write_text_atomic(out / "sweep.html", render_sweep_html(summary))
    return summary
