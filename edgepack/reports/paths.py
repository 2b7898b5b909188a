"""Host paths out of what a run hands on: manifest.json and the reports are forwarded and shipped, and an absolute
path of the machine that packed (/home/alice/project/weights.pt) means nothing elsewhere and tells too much."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

# The recipe keys that name files on the host (recipe.py resolves exactly these against the recipe's folder); a
# device's folder (bench.adb_device_dir) or command (remote_python) is not the host's and stays as written.
HOST_PATH_KEYS = {"weights", "path", "calibration_data", "train_data", "ssh_identity_file", "ssh_known_hosts",
                  "benchmark_model"}  # fmt: skip


def relative_to_run(results: dict) -> dict:
    """``results`` with the recipe's host paths and the input hashes' file names written relative to the run folder
    (``../project/weights.pt``); the run folder itself becomes '.'."""
    run_dir = results.get("run_dir") or "/"
    portable = {key: _relative_keys(results[key], run_dir) for key in ("recipe", "recipe_given") if key in results}
    inputs = results.get("inputs") or {}
    if inputs.get("files"):
        portable["inputs"] = inputs | {"files": {_relative(k, run_dir): v for k, v in inputs["files"].items()}}
    return results | portable | {"run_dir": "."}


def _relative_keys(value, run_dir: str, key: str | None = None):
    if isinstance(value, dict):
        return {k: _relative_keys(v, run_dir, k if k in HOST_PATH_KEYS else key) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_keys(item, run_dir, key) for item in value]
    return _relative(value, run_dir) if key in HOST_PATH_KEYS else value


def _relative(value, run_dir: str):
    if isinstance(value, str) and PurePosixPath(value).is_absolute():
        return os.path.relpath(value, run_dir)
    return value
