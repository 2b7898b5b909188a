"""Where a benchmark runs: a target ships ``runner.py`` and a model, runs it, and returns the runner's record.

Every target runs the same self-contained runner with the same arguments and reads back the same one-line
JSON record, so the figures from the host, a board over ssh and a phone over adb compare like for like. A
target is a small class with a ``name`` and ``bench(model_path, options) -> dict``; only how the runner is
started differs. ``bench`` then adds the analytic energy proxy, computed here from the file itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from edgepack.device_bench.energy_proxy import energy_proxy
from edgepack.device_bench.options import BenchOptions
from edgepack.device_bench.records import RUNNER_PATH, bench_failure, record_from_process, runner_arguments

from edgepack.core.errors import UserError

TARGET_FORMS = ("host", "ssh://user@host[:port]", "adb://SERIAL")


class BenchTarget(Protocol):
    name: str

    def bench(self, model_path: Path, options: BenchOptions) -> dict: ...


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


def target_error(text: str, reason: str = "") -> UserError:
    allowed = ", ".join(repr(form) for form in TARGET_FORMS)
    return UserError(f"unknown benchmark target {text!r}{reason}; allowed forms: {allowed}")


def parse_target(text: str) -> BenchTarget:
    """The target a string names: 'host', 'ssh://user@host[:port]' or 'adb://SERIAL'."""
    cleaned = text.strip()
    if cleaned.lower() == "host":
        return HostTarget()
    if cleaned.startswith("ssh://"):
        return parse_ssh_target(cleaned)
    if cleaned.startswith("adb://"):
        return parse_adb_target(cleaned)
    raise target_error(text)


def parse_ssh_target(text: str) -> BenchTarget:
    from edgepack.device_bench.ssh_target import SshTarget  # paramiko is imported only when an ssh target is used

    parts = urlsplit(text)
    try:
        port = parts.port or 22
    except ValueError as error:
        raise target_error(text, " (the port must be a number from 1 to 65535)") from error
    if not parts.username or not parts.hostname or parts.password or parts.path.strip("/") or parts.query:
        raise target_error(text, " (an ssh target names a user and a host, and nothing else)")
    return SshTarget(parts.username, parts.hostname, port, name=text)


def parse_adb_target(text: str) -> BenchTarget:
    from edgepack.device_bench.adb_target import AdbTarget

    serial = text.removeprefix("adb://")
    if not serial or any(character.isspace() or character == "/" for character in serial):
        raise target_error(text, " (an adb target is adb:// followed by a serial from 'adb devices')")
    return AdbTarget(serial)


def bench(model_path: Path | str, target: str = "host", options: BenchOptions | None = None) -> dict:
    """Benchmark one .tflite or .onnx file on a target with one thread count; returns its record (see runner.py)."""
    options = options or BenchOptions()
    if len(options.thread_counts) != 1:
        message = f"bench() gives one record for one thread count, got threads={options.threads}"
        raise UserError(message + "; use bench_each_thread_count() for a list")
    path = Path(model_path)
    record = parse_target(target).bench(path, options)
    return record | {"energy": (record.get("energy") or {}) | {"proxy": energy_proxy(path)}}


def bench_each_thread_count(
    model_path: Path | str, target: str = "host", options: BenchOptions | None = None
) -> list[dict]:
    """One record per thread count in ``options.threads``, in that order."""
    options = options or BenchOptions()
    return [bench(model_path, target, options.with_threads(threads)) for threads in options.thread_counts]
