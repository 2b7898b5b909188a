"""The runner's command line and its one-line JSON record, shared by every target."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgepack.device_bench.options import BenchOptions

from edgepack.core.errors import BenchError

RUNNER_PATH = Path(__file__).with_name("runner.py")
# What a device gets: the runner and the one module it imports from beside itself.
RUNNER_FILES = (RUNNER_PATH,)  # one self-contained file: what a device needs, and all it gets
# What a device needs besides Python for each model format (the runner names the same in its own errors).
INSTALL_HINTS = {
    ".onnx": "pip install numpy onnxruntime",
    ".tflite": "pip install numpy ai-edge-litert (or tflite-runtime)",
}


@dataclass(frozen=True)
class SampleFiles:
    """Verification samples for the runner to run after timing (a local .npz in the runner's format, see
    runner.py), and the local path their outputs are written to."""

    samples: Path
    outputs: Path


def runner_arguments(
    model_path: str, options: BenchOptions, samples: str | None = None, outputs: str | None = None
) -> list[str]:
    """The runner's command-line arguments after its own path; every path is as the device sees it."""
    (threads,) = options.thread_counts  # one record per thread count: the caller picked one
    with_samples = ["--samples", samples, "--outputs", outputs] if samples else []
    return [
        model_path,
        *("--runs", str(options.runs), "--warmup", str(options.warmup)),
        *("--min-seconds", repr(options.min_seconds), "--threads", str(threads)),
        *("--seed", str(options.seed)),
        # A scalar's shape [] has nothing dynamic to give.
        *(f"--input-shape={name}={'x'.join(map(str, shape))}" for name, shape in options.input_shapes.items() if shape),
        *(f"--input={name}={path}" for name, path in options.input_values.items()),
        *with_samples,
    ]


def bench_failure(model_path: Path, target: str, cause: str) -> BenchError:
    return BenchError(f"benchmark of {model_path} on target {target!r} failed: {cause}")


def last_json_line(stdout: str) -> dict | None:
    """The runner's record: its last stdout line (a runtime or a remote shell may print before it)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        record = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def record_from_process(completed: subprocess.CompletedProcess, model_path: Path, target: str) -> dict:
    """The runner's record with the target added, or a BenchError carrying the runner's own message."""
    record = last_json_line(completed.stdout)
    if record is None:
        stderr_tail = completed.stderr.strip()[-2000:] or "(nothing on stderr)"
        cause = f"the runner exited with code {completed.returncode} without a record; stderr: {stderr_tail}"
        raise bench_failure(model_path, target, cause)
    if "error" in record or completed.returncode != 0:
        cause = record.get("error", f"the runner exited with code {completed.returncode}")
        raise bench_failure(model_path, target, cause)
    return record | {"target": target}
