"""Where a benchmark runs: a target ships ``runner.py`` and a model, runs it, and returns the runner's record.

Every target runs the same self-contained runner with the same arguments and reads back the same one-line
JSON record, so the figures from the host, a board over ssh and a phone over adb compare like for like. A
target is a small class with a ``name`` and ``bench(model_path, options) -> dict``; only how the runner is
started differs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from edgepack.errors import BenchError, UserError

RUNNER_PATH = Path(__file__).with_name("runner.py")
ALLOWED_TARGETS = ("host",)
LATER_TARGETS = ("ssh://user@host[:port]", "adb://SERIAL")


class BenchOptions(BaseModel):
    """How long and how hard to benchmark; the same on every target."""

    model_config = ConfigDict(extra="forbid")
    runs: int = Field(50, ge=1, description="Least number of timed runs; more run until min_seconds passed.")
    warmup: int = Field(5, ge=0, description="Untimed runs after the first inference, before timing starts.")
    min_seconds: float = Field(1.0, ge=0, description="Least wall time of the timed runs, in seconds.")
    threads: int = Field(1, ge=1, description="CPU threads: LiteRT num_threads, ORT intra-op threads.")
    seed: int = Field(0, description="Seed of the random input data.")
    timeout_seconds: float = Field(300, gt=0, description="Seconds before the runner process is stopped.")


class BenchTarget(Protocol):
    name: str

    def bench(self, model_path: Path, options: BenchOptions) -> dict: ...


def runner_arguments(model_path: str, options: BenchOptions) -> list[str]:
    """The runner's command-line arguments after its own path; the model path is as the device sees it."""
    return [
        model_path,
        *("--runs", str(options.runs), "--warmup", str(options.warmup)),
        *("--min-seconds", repr(options.min_seconds), "--threads", str(options.threads)),
        *("--seed", str(options.seed)),
    ]


def bench_failure(model_path: Path, target: str, cause: str) -> BenchError:
    return BenchError(f"benchmark of {model_path} on target {target!r} failed: {cause}")


def last_json_line(stdout: str) -> dict | None:
    """The runner's record: its last stdout line (a runtime may print before it)."""
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


class HostTarget:
    """This machine: the runner runs in a fresh Python process so that its memory figures are its own."""

    name = "host"

    def bench(self, model_path: Path, options: BenchOptions) -> dict:
        command = [sys.executable, str(RUNNER_PATH), *runner_arguments(str(model_path), options)]
        timeout = options.timeout_seconds
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            cause = f"the runner did not finish within timeout_seconds={options.timeout_seconds}"
            raise bench_failure(model_path, self.name, cause) from error
        return record_from_process(completed, model_path, self.name)


def parse_target(text: str) -> BenchTarget:
    """The target a string names: 'host' today; ssh:// and adb:// targets arrive in a later version."""
    if text.strip().lower() == "host":
        return HostTarget()
    allowed = ", ".join(repr(name) for name in ALLOWED_TARGETS)
    later = " and ".join(LATER_TARGETS)
    message = f"unknown benchmark target {text!r}; allowed: {allowed}. {later} arrive in a later version"
    raise UserError(message)


def bench(model_path: Path | str, target: str = "host", options: BenchOptions | None = None) -> dict:
    """Benchmark one .tflite or .onnx file on a target and return its result record (see runner.py)."""
    return parse_target(target).bench(Path(model_path), options or BenchOptions())
