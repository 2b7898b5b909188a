"""results.json: every figure of every artifact, the steps, and what the run was made from."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
from importlib import metadata

from edgepack.core.artifacts import write_text_atomic
from edgepack.core.version import __version__
from edgepack.recipe import recipe_to_yaml

RECORDED_PACKAGES = [
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "tensorflow-cpu",
    "tensorflow",
    "ai-edge-litert",
    "tflite-runtime",
    "numpy",
    "scikit-learn",
    "pydantic",
]


def package_versions() -> dict[str, str]:
    versions = {"edgepack": __version__, "python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def environment() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "packages": package_versions()}


def build_results(ctx) -> dict:
    recipe = ctx.recipe
    artifacts = [{**a.model_dump(mode="json"), **ctx.records.get(a.name, {})} for a in ctx.artifacts]
    results = {
        "edgepack_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_dir": str(ctx.run_dir),
        "recipe": recipe.model_dump(mode="json"),
        "recipe_given": recipe.model_dump(mode="json", exclude_unset=True),  # the user's own keys, for comparisons
        "inputs": {"model_sha256": ctx.loaded.sha256, "files": ctx.loaded.input_hashes},
        "environment": environment(),
        "steps": [vars(r) for r in ctx.steps.records],
        "all_cached": ctx.steps.all_cached(),
        "artifacts": artifacts,
    }
    sensitivity = next((a["details"]["sensitivity"] for a in artifacts if a["details"].get("sensitivity")), None)
    if sensitivity is not None:  # the quantize stage's ranking (accuracy_target), kept in its artifacts' details
        results["sensitivity"] = sensitivity
    if recipe.gate is not None:
        from edgepack.reports.gate import evaluate_gate

        results["gate"] = evaluate_gate(results, recipe.gate)
    return results


def write_run_outputs(ctx, failure: dict | None = None) -> dict:
    """results.json first (the one source), then everything derived from it. A run that failed after loading
    (``failure``: the step and the error) keeps what it measured, with ``status: failed`` and the error; it has no
    manifest: an app must not ship from a run that did not finish."""
    from edgepack.reports.manifest import write_manifest
    from edgepack.reports.report import write_reports

    if failure is not None:
        for record in ctx.records.values():  # the artifacts the failure came before were not benchmarked
            record.setdefault("bench", [])
    results = build_results(ctx) | ({} if failure is None else {"status": "failed", "failure": failure})
    write_text_atomic(ctx.run_dir / "results.json", json.dumps(results, indent=2))
    write_text_atomic(ctx.run_dir / "recipe.yaml", recipe_to_yaml(ctx.recipe))
    if failure is None:
        write_manifest(ctx.run_dir, results)
    else:
        (ctx.run_dir / "manifest.json").unlink(missing_ok=True)  # an earlier run's would describe other files
    write_reports(ctx.run_dir, results)
    return results
