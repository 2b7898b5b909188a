"""The run: load -> stages (export, convert, ...) -> verify + evaluate each artifact -> bench -> reports.

Every step's result is cached by content hash in the run folder, so a second identical run redoes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.core.artifacts import Artifact, Format, TensorSpec, ancestors, sha256_file
from edgepack.core.version import __version__
from edgepack.recipe import STAGE_DATA_KEYS, ModelFormat, Recipe, load_recipe
from edgepack.running import bench_guard, measure, run_folder
from edgepack.running.cache import StepCache, cache_key
from edgepack.running.context import RunContext
from edgepack.running.data import load_eval_data, verification_samples
from edgepack.running.loading import LoadedModel, load_model
from edgepack.running.progress import Steps
from edgepack.stages.registry import get_stage


@dataclass
class PackResult:
    run_dir: Path
    results: dict

    @property
    def artifacts(self) -> list[dict]:
        return self.results["artifacts"]


def pack(
    recipe: Recipe | str | Path,
    *,
    out: str | Path | None = None,
    overrides: list[str] = (),
    quiet: bool = False,
    rebench: bool = False,
) -> PackResult:
    """Run the recipe; artifacts, results.json, manifest.json and report.md land in ``out`` (default runs/NAME).
    ``rebench`` measures the latencies again instead of taking them from the cache (every other step still may)."""
    from edgepack.running.results import write_run_outputs

    recipe_folder = None
    if not isinstance(recipe, Recipe):
        recipe_folder = Path(recipe).resolve().parent  # a factory module beside the recipe imports from there
        recipe = load_recipe(Path(recipe), list(overrides))
    run_dir = Path(out or Path("runs") / recipe.name).resolve()
    created = not run_dir.exists()
    _make_run_dir(run_dir)
    with run_folder.locked(run_dir):
        run_folder.remove_stale_temp_files(run_dir)
        _seed_everything(recipe.seed)
        steps = Steps(quiet=quiet)
        try:
            ctx = _start(recipe, run_dir, steps, recipe_folder)
        except BaseException:
            if created:  # a run that fails while loading leaves no folder behind (this call made it; nothing cached)
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        try:
            for config in recipe.stages:
                _run_stage(ctx, config)
            _bench_all(ctx, rebench)
        except Exception as error:  # not a Ctrl-C: that run resumes from the cache, it has nothing to report
            with contextlib.suppress(Exception):  # a report that cannot be written must not hide why the run failed
                write_run_outputs(ctx, failure={"step": steps.failed_step, "error": str(error)})
            raise
        results = write_run_outputs(ctx)
    return PackResult(run_dir, results)


def _make_run_dir(run_dir: Path) -> None:
    from edgepack.core.errors import UserError

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is an existing file, not a folder; name a run folder (new or earlier run's)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {run_dir} ({e.strerror}); choose another --out") from e


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _start(recipe: Recipe, run_dir: Path, steps: Steps, recipe_folder: Path | None) -> RunContext:
    with steps.step("load", f"loading the {recipe.model.format} model"):
        loaded = load_model(recipe.model, recipe_folder)
        eval_data = load_eval_data(recipe)
        verify_data = verification_samples(recipe, eval_data)
    ctx = RunContext(recipe, run_dir, loaded, StepCache(run_dir), steps, eval_data, verify_data)
    root = _root_artifact(ctx)
    ctx.artifacts.append(root)
    ctx.records[root.name] = {"verification": None}
    ctx.reference  # noqa: B018  run the source once now: a wrong input shape fails here, clearly, not in a stage
    _check_labels(recipe, ctx.reference, eval_data)
    _evaluate(ctx, root)
    return ctx


def _check_labels(recipe: Recipe, reference: dict[str, np.ndarray], eval_data) -> None:
    """A classifier's class names and evaluation labels must fit its first output (the class scores)."""
    from edgepack.core.errors import DataError, RecipeError
    from edgepack.recipe import Task

    if recipe.task != Task.CLASSIFICATION:
        return
    first = next(iter(reference.values()))
    classes = int(np.prod(first.shape[1:]))
    if recipe.labels is not None and len(recipe.labels) != classes:
        raise RecipeError(
            f"'labels' lists {len(recipe.labels)} class names but the model's output {next(iter(reference))!r} has "
            f"{classes} scores per sample; give one name per class, in index order (or remove 'labels')"
        )
    labels = None if eval_data is None else eval_data.labels
    if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"the evaluation data's labels range over [{labels.min()}, {labels.max()}] but the model has {classes} "
            f"classes (labels 0..{classes - 1}); check the data's labels against the model (or set task: other)"
        )


def _root_artifact(ctx: RunContext) -> Artifact:
    """The source model: in memory for torch sources; for a file source, a copy in the run (never the user's file)."""
    loaded, recipe = ctx.loaded, ctx.recipe
    if loaded.format not in (ModelFormat.ONNX, ModelFormat.TFLITE):
        inputs = [TensorSpec(name=i.name, shape=i.shape, dtype=i.dtype) for i in recipe.model.inputs]
        return Artifact(name="torch-fp32", format=Format.TORCH, path="", sha256=loaded.sha256,
                        bytes=_parameter_bytes(loaded), stage="load", inputs=inputs,
                        details={"source_format": str(loaded.format)})  # fmt: skip
    suffix = loaded.file_path.suffix
    copy = ctx.artifact_file("source", suffix)
    copy.parent.mkdir(parents=True, exist_ok=True)
    if loaded.format == ModelFormat.ONNX:
        from edgepack.converters.onnx_info import copy_self_contained

        copy_self_contained(loaded.file_path, copy)
        return _onnx_root(ctx, copy)
    shutil.copyfile(loaded.file_path, copy)
    return _tflite_root(ctx, copy)


def _onnx_root(ctx: RunContext, copy: Path) -> Artifact:
    from edgepack.converters.onnx_info import onnx_artifact

    return onnx_artifact(ctx.run_dir, copy, name="onnx-fp32", stage="load", parent=None)


def _tflite_root(ctx: RunContext, copy: Path) -> Artifact:
    """Another tool's (or an earlier run's) .tflite: described from the file, then measured like any artifact."""
    from edgepack.converters.runtime import describe_tflite

    described = describe_tflite(copy)
    return Artifact(
        name=f"tflite-{described.precision}", format=Format.TFLITE, precision=described.precision,
        path=str(copy.relative_to(ctx.run_dir)), sha256=sha256_file(copy), bytes=copy.stat().st_size,
        stage="load", inputs=described.inputs, outputs=described.outputs, op_counts=described.op_counts,
        details={"source_format": "tflite", "written_by_edgepack": described.written_by_edgepack,
                 "transposes": described.op_counts.get("TRANSPOSE", 0)},
    )  # fmt: skip


def _parameter_bytes(loaded: LoadedModel) -> int:
    return sum(t.numel() * t.element_size() for t in loaded.module.state_dict().values())


def _run_stage(ctx: RunContext, config) -> None:
    """The stage gets the artifacts its selector picks and a StageView; its key hashes exactly what it can read."""
    entry, view = get_stage(config.stage), ctx.stage_view()
    inputs = entry.reads(ctx.artifacts)
    # Stages learn from data (calibration, fine-tuning): the data's content is part of the key, not only its path.
    key = cache_key(entry.name, config.model_dump(mode="json"), [a.sha256 for a in inputs], _handoffs_read(ctx, inputs),
                    view.facts_key(entry.exports), __version__, _stage_data_hashes(config),
                    ctx.input_values_key)  # fmt: skip
    output = ctx.cache.load_stage_output(entry.name, key)
    with ctx.steps.step(entry.name, f"{entry.name} stage", cached=output is not None):
        if output is None:
            output = entry.run(config, inputs, view)
            ctx.cache.save_stage_output(entry.name, key, output)
    for artifact in output.artifacts:
        _check_new_artifact(ctx, artifact, output.artifacts)
        ctx.artifacts.append(artifact)
        ctx.handoffs[artifact.name] = {type(r).__name__: r for n, r in output.handoffs.items() if n == artifact.name}


def _handoffs_read(ctx: RunContext, inputs: list[Artifact]) -> list:
    """The records handed on for the inputs and their ancestors: what ``StageContext.handoff`` can return."""
    lineage = {a.name for i in inputs for a in [i, *ancestors(ctx.artifacts, i)]}
    return [[name, kind, record.model_dump(mode="json")] for name in sorted(lineage)
            for kind, record in sorted(ctx.handoffs.get(name, {}).items())]  # fmt: skip


def _stage_data_hashes(config) -> list:
    """The content of each data file a stage names (calibration_data, train_data); folders by their file listing."""
    hashes = []
    for key in STAGE_DATA_KEYS:
        source = getattr(config, key, None)
        path = source if isinstance(source, Path) else getattr(source, "path", None)
        if path is not None and Path(path).is_file():
            hashes.append(sha256_file(Path(path)))
        elif path is not None and Path(path).is_dir():
            hashes.append(cache_key(sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                                           for f in Path(path).rglob("*") if f.is_file())))  # fmt: skip
    return hashes


def _cached_record(ctx: RunContext, kind: str, key: str, step: str, about: str, compute, fresh: bool = False) -> dict:
    """A measured step: its result from the cache when the key matches (and not ``fresh``), else computed, saved
    and returned."""
    entry = None if fresh else ctx.cache.load(kind, key)
    with ctx.steps.step(step, about, cached=entry is not None):
        if entry is None:
            entry = compute()
            ctx.cache.save(kind, key, entry)
    return entry


def _check_new_artifact(ctx: RunContext, artifact: Artifact, stage_outputs: list[Artifact]) -> None:
    """Verify against the reference before the artifact counts as done. When one fails, it and the files of its stage
    not yet verified are removed (they never count as done), and the error names the worst layers of each.

    A torch model written by a compression stage is not verified against anything: it is meant to differ from its
    parent. It becomes the reference of what is exported from it; its accuracy is measured like every artifact's."""
    if artifact.format == Format.TORCH:
        ctx.records[artifact.name] = {"verification": None}
        _evaluate(ctx, artifact)
        _record_sparsity(ctx, artifact)
        return
    reference = ctx.reference_artifact(artifact)
    run_facts = ctx.recipe.model_dump(mode="json", include={"task", "seed"})
    key = cache_key("verify", artifact.sha256, reference.sha256, ctx.recipe.verify.model_dump(), run_facts,
                    ctx.data_key)  # fmt: skip

    def verify() -> dict:
        unverified = stage_outputs[stage_outputs.index(artifact) :]
        try:
            return measure.verify_artifact(ctx, artifact, stage_outputs).model_dump()
        except Exception:
            for removed in unverified:
                if removed.path:
                    ctx.artifact_path(removed).unlink(missing_ok=True)
            raise

    verification = _cached_record(ctx, "verify", key, f"verify {artifact.name}", f"verifying {artifact.name}", verify)
    ctx.records[artifact.name] = {"verification": verification}
    _evaluate(ctx, artifact)
    _stage_measurements(ctx, artifact)
    _record_sparsity(ctx, artifact)


def _evaluate(ctx: RunContext, artifact: Artifact) -> None:
    key = cache_key("evaluate", artifact.sha256, ctx.data_key, ctx.recipe.task)
    entry = _cached_record(ctx, "evaluate", key, f"accuracy {artifact.name}", f"measuring accuracy of {artifact.name}",
                           lambda: {"accuracy": measure.evaluate_artifact(ctx, artifact)})  # fmt: skip
    ctx.records[artifact.name]["accuracy"] = entry["accuracy"]
    _measure_robustness(ctx, artifact)


def _measure_robustness(ctx: RunContext, artifact: Artifact) -> None:
    from edgepack.running import robustness

    config = ctx.recipe.robustness
    if config is None or not robustness.applies_to(ctx.eval_data, ctx.recipe.task == "classification"):
        return
    code = sha256_file(Path(robustness.__file__))  # the perturbations are what is measured: part of the key
    key = cache_key("robustness", artifact.sha256, ctx.data_key, config.model_dump(), ctx.recipe.seed, code)
    ctx.records[artifact.name]["robustness"] = _cached_record(
        ctx, "robustness", key, f"robustness {artifact.name}", f"robustness of {artifact.name}",
        lambda: measure.robustness_record(ctx, artifact, config))  # fmt: skip


def _stage_measurements(ctx: RunContext, artifact: Artifact) -> None:
    """The figures the stage that made ``artifact`` asks for on it (the quantize stage: per-layer SQNR), each a
    cached record of its own stored under its name in results.json (``artifacts[].layer_sqnr``)."""
    if artifact.stage == "load":
        return
    lineage = [a.sha256 for a in ancestors(ctx.artifacts, artifact)]
    for name, measurement in get_stage(artifact.stage).measurements.items():
        key = cache_key(name, artifact.sha256, lineage, ctx.recipe.verify.model_dump(), ctx.data_key,
                        measurement.code_hash())  # fmt: skip
        step = f"{name.replace('_', ' ')} {artifact.name}"
        entry = _cached_record(ctx, name, key, step, f"{name} of {artifact.name}",
                               lambda m=measurement: {"value": m.measure(ctx.stage_view(), artifact)})  # fmt: skip
        if entry["value"] is not None:
            ctx.records[artifact.name][name] = entry["value"]


def _record_sparsity(ctx: RunContext, artifact: Artifact) -> None:
    """Zero weights per layer, read from the artifact itself (the file for ONNX/TFLite), and the gzip size: a
    pruned dense tensor only shrinks when compressed. Only for models that descend from a prune stage."""
    if not measure.descends_from(ctx, artifact, "prune"):
        return
    ctx.records[artifact.name]["sparsity"] = measure.weight_sparsity(ctx, artifact)
    if artifact.format != Format.TORCH:
        from edgepack.converters.sparsity import gzip_bytes

        ctx.records[artifact.name]["gzip_bytes"] = gzip_bytes(ctx.artifact_path(artifact))


def _bench_all(ctx: RunContext, fresh: bool) -> None:
    options = ctx.recipe.bench
    for artifact in ctx.artifacts:
        ctx.records[artifact.name]["bench"] = []
        if options is not None and artifact.format in (Format.ONNX, Format.TFLITE):
            _bench_artifact(ctx, artifact, options, fresh)


def _bench_artifact(ctx: RunContext, artifact: Artifact, options, fresh: bool) -> None:
    """One record per (target, thread count); with only one, the step keeps its plain name. A remote target also
    runs the verification samples and checks its outputs (running/on_target.py): a failure fails the run."""
    from edgepack.device_bench import bench
    from edgepack.running.on_target import TargetCheck, is_remote

    shaped = options.model_copy(update={"input_shapes": _bench_shapes(ctx, artifact) | options.input_shapes})
    runs = [(target, _with_values(ctx, shaped).with_threads(n))
            for target in ctx.recipe.targets for n in options.thread_counts]  # fmt: skip
    check, path = TargetCheck(ctx, artifact), ctx.artifact_path(artifact)
    for target, one in runs:
        remote = is_remote(target)
        # On a remote target the samples' content, the reference and the tolerances are part of the key.
        values = sorted((name, sha256_file(Path(path))) for name, path in one.input_values.items())
        key = cache_key("bench", artifact.sha256, target, one.model_dump(mode="json"), _runner_sha256(), values,
                        *([check.key] if remote else []))  # fmt: skip
        step = f"bench {artifact.name}" + (f" {target} threads={one.threads}" if len(runs) > 1 else "")
        about = f"benchmarking {artifact.name} on {target} with {one.threads} thread(s)"
        about += " and verifying its outputs there" if remote else ""
        compute = functools.partial(check.bench, target, one) if remote else functools.partial(bench, path, target, one)
        compute = bench_guard.guarded(target, compute)  # a sweep's concurrent runs take turns timing (bench_guard)
        ctx.records[artifact.name]["bench"].append(_cached_record(ctx, "bench", key, step, about, compute, fresh))


def _with_values(ctx: RunContext, options):
    """The recipe's input values (a sample rate, a state): the host reads the files, a device gets copies."""
    values = {i.name: i.value for i in ctx.recipe.model.inputs if i.value is not None} | options.input_values
    return options.model_copy(update={"input_values": values})


def _bench_shapes(ctx: RunContext, artifact: Artifact) -> dict[str, list[int]]:
    """An ONNX artifact may keep the source's dynamic dimensions: it is timed at the recipe's input shapes. (TFLite
    files are converted at those shapes, so theirs are fixed already.)"""
    if artifact.format != Format.ONNX:
        return {}
    names = {spec.name for spec in artifact.inputs}
    return {i.name: list(i.shape) for i in ctx.recipe.model.inputs if i.name in names}


@functools.cache
def _runner_sha256() -> str:
    """What a benchmark measures and records is device_bench's code (runner, probes, energy proxy): a change to it
    is part of the bench cache key."""
    from edgepack import device_bench

    return cache_key(*(sha256_file(path) for path in sorted(Path(device_bench.__file__).parent.glob("*.py"))))
