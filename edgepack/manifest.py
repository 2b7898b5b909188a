"""manifest.json: what a phone or board app needs to ship and call each deployable artifact.

Built from results.json only, like every report.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgepack.artifacts import write_text_atomic

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


def build_manifest(results: dict) -> dict:
    recipe = results["recipe"]
    data = recipe.get("data") or {}
    return {
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
    if data.get("source") == "digits":
        from calibration.sources import DIGITS_PREPROCESSING

        return {**DIGITS_PREPROCESSING, **data.get("preprocessing", {})}
    return data.get("preprocessing", {})


def _entry(artifact: dict) -> dict:
    verification = artifact.get("verification") or {}
    return {
        "name": artifact["name"],
        "file": artifact["path"],
        "sha256": artifact["sha256"],
        "bytes": artifact["bytes"],
        "format": artifact["format"],
        "precision": artifact["precision"],
        "runtime": _runtime(artifact, verification),
        "inputs": artifact["inputs"],
        "outputs": artifact["outputs"],
    }


def _runtime(artifact: dict, verification: dict) -> dict:
    runtime = {"name": verification.get("runtime"), "verified_with": verification.get("runtime_version")}
    if artifact["format"] == "onnx":
        runtime["min_version"] = ORT_MIN_VERSION_BY_OPSET.get(artifact["details"].get("opset"))
    return runtime


def write_manifest(run_dir: Path, results: dict) -> None:
    write_text_atomic(Path(run_dir) / "manifest.json", json.dumps(build_manifest(results), indent=2))
