"""manifest.json: what a phone or board app needs to ship and call each deployable artifact.

Built from results.json only, like every report, and checked against the JSON Schema shipped beside this module
(edgepack/schemas/manifest.schema.json) before it is written: an app can rely on every key the schema names.
An app needs nothing of edgepack to use it: read the file, check its sha256, build the input from
``preprocessing`` and the input tensor's ``layout`` (and ``quantization`` for an integer tensor), call the runtime
with each tensor's ``runtime_key``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

from edgepack.core.artifacts import write_text_atomic
from edgepack.core.errors import StageError

MANIFEST_VERSION = 1
# Oldest onnxruntime release that runs each opset (onnxruntime's published compatibility table).
ORT_MIN_VERSION_BY_OPSET = {
    13: "1.7",
    14: "1.10",
    15: "1.11",
    16: "1.12",
    17: "1.13",
    18: "1.14",
    19: "1.15",
    20: "1.17",
    21: "1.18",
    22: "1.20",
    23: "1.22",
}
DEPLOYABLE = ("onnx", "tflite")
RUNTIME_NAMES = {"onnx": "onnxruntime", "tflite": "litert"}
# What an app assumes when the recipe says nothing: raw values are the model's input values.
PREPROCESSING_DEFAULTS = {"description": None, "resize": None, "color": None, "scale": 1.0, "mean": [0.0], "std": [1.0]}


def build_manifest(results: dict) -> dict:
    from edgepack.reports.paths import relative_to_run

    results = relative_to_run(results)
    recipe = results["recipe"]
    data = recipe.get("data") or {}
    return {
        "manifest_version": MANIFEST_VERSION,
        "edgepack_version": results["edgepack_version"],
        "model": recipe["name"],
        "task": recipe["task"],
        "labels": recipe.get("labels"),
        "preprocessing": _preprocessing(data),
        "artifacts": [_entry(a) for a in results["artifacts"] if a["format"] in DEPLOYABLE],
        "inputs_sha256": results["inputs"],
        "packages": results["environment"]["packages"],
        "recipe": recipe,
    }


def _preprocessing(data: dict) -> dict:
    """x = (raw * scale - mean) / std per channel, in the color order named, resized to ``resize`` first."""
    given = data.get("preprocessing") or {}
    if data.get("source") == "digits":
        from edgepack.core.dataset import DIGITS_PREPROCESSING

        given = {**DIGITS_PREPROCESSING, **given}
    return {**PREPROCESSING_DEFAULTS, **given}


def _entry(artifact: dict) -> dict:
    accuracy = artifact.get("accuracy") or {}
    return {
        "name": artifact["name"],
        "file": artifact["path"],
        "sha256": artifact["sha256"],
        "bytes": artifact["bytes"],
        "format": artifact["format"],
        "precision": artifact["precision"],
        "runtime": _runtime(artifact),
        "inputs": [_tensor(t) for t in artifact["inputs"]],
        "outputs": [_tensor(t) for t in artifact["outputs"]],
        "top1": accuracy.get("top1"),
    }


def _tensor(spec: dict) -> dict:
    # The key a runtime is called with: the ONNX name, or the TFLite signature key where it had to differ.
    return {**spec, "runtime_key": spec.get("tensor_name") or spec["name"]}


def _runtime(artifact: dict) -> dict:
    verification = artifact.get("verification") or {}
    verified = verification.get("runtime") and f"{verification['runtime']} {verification['runtime_version']}"
    return {"name": RUNTIME_NAMES[artifact["format"]], **_min_version(artifact), "verified_with": verified or None}


def _min_version(artifact: dict) -> dict:
    details = artifact.get("details") or {}
    if artifact["format"] == "onnx":
        opset = details.get("opset")
        return {"min_version": ORT_MIN_VERSION_BY_OPSET.get(opset), "min_version_of": f"onnxruntime, opset {opset}"}
    return {"min_version": details.get("min_runtime_version"), "min_version_of": "TFLite runtime (the converter's)"}


@cache
def manifest_schema() -> dict:
    return json.loads(resources.files("edgepack").joinpath("schemas/manifest.schema.json").read_text())


def validate_manifest(manifest: dict) -> None:
    """Raise StageError naming the first key that breaks the shipped schema."""
    import jsonschema

    try:
        jsonschema.validate(manifest, manifest_schema(), cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise StageError("manifest", f"manifest.json breaks its schema at {where}: {e.message}") from e


def write_manifest(run_dir: Path, results: dict) -> None:
    manifest = build_manifest(results)
    validate_manifest(manifest)
    write_text_atomic(Path(run_dir) / "manifest.json", json.dumps(manifest, indent=2))
