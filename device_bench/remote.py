"""Benchmark on a device reached through a shell, ssh or adb: one protocol, two transports.

The steps are the same on both: make a temporary folder, copy the runner (or TFLite's benchmark_model) and the
model into it, run it in the background with its pid in a file (so that a timeout can stop it), read back what
it wrote, and remove the folder whatever happened. A transport only knows how to run one shell command, copy a
file there and read a file back; every part of a command that comes from the user is quoted with shlex.quote,
because the device runs it through a shell.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgepack.device_bench import benchmark_model
from edgepack.device_bench.options import BenchOptions
from edgepack.device_bench.records import (
    INSTALL_HINTS,
    RUNNER_FILES,
    SampleFiles,
    bench_failure,
    record_from_process,
    runner_arguments,
)

HOUSEKEEPING_SECONDS = 60  # mktemp, chmod, kill, rm, reading a small file back
COMMAND_NOT_FOUND, NOT_EXECUTABLE = 127, 126  # POSIX shells' exit codes


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


class RemoteTimeout(Exception):
    """A device command ran past its time; the transport stopped waiting for it."""


class RemoteShell(Protocol):
    target: str  # the target's name in records and errors

    def run(self, command: str, timeout: float) -> CommandResult: ...

    def upload(self, local: Path, remote: str, timeout: float) -> None: ...

    def read_bytes(self, remote: str, timeout: float) -> bytes | None:
        """A file's content, or None when it does not exist."""


def read_text(shell: RemoteShell, remote: str) -> str | None:
    content = shell.read_bytes(remote, HOUSEKEEPING_SECONDS)
    return None if content is None else content.decode(errors="replace")


def bench_on_remote(
    shell: RemoteShell, model_path: Path, options: BenchOptions, base_folder: str, samples: SampleFiles | None = None
) -> dict:
    """Benchmark ``model_path`` in a fresh folder under ``base_folder`` (a shell expression) and remove it; with
    ``samples``, also run them there and bring their outputs back before the folder goes."""
    try:
        folder = make_folder(shell, base_folder, model_path)
        try:
            record = bench_in_folder(shell, folder, model_path, options, samples)
        except BaseException:  # Ctrl-C too: the runner must not go on on the device until its time is up
            with contextlib.suppress(Exception):  # a failed clean-up must not hide why the benchmark failed
                stop_job(shell, folder)
                remove_folder(shell, folder, model_path)
            raise
        remove_folder(shell, folder, model_path)
    except RemoteTimeout as error:  # a housekeeping step hung: the device or the link stopped answering
        raise bench_failure(model_path, shell.target, f"the device stopped answering: {error}") from error
    return record


def make_folder(shell: RemoteShell, base_folder: str, model_path: Path) -> str:
    result = shell.run(f"mktemp -d {base_folder}/edgepack-bench.XXXXXX", HOUSEKEEPING_SECONDS)
    folder = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.exit_code != 0 or not folder.startswith("/"):
        detail = result.stderr.strip() or result.stdout.strip() or f"exit code {result.exit_code}"
        raise bench_failure(model_path, shell.target, f"could not make a temporary folder: {detail}")
    return folder


def remove_folder(shell: RemoteShell, folder: str, model_path: Path) -> None:
    result = shell.run(f"rm -rf -- {shlex.quote(folder)}", HOUSEKEEPING_SECONDS)
    if result.exit_code != 0:
        raise bench_failure(model_path, shell.target, f"could not remove {folder}: {result.stderr.strip()}")


def bench_in_folder(
    shell: RemoteShell, folder: str, model_path: Path, options: BenchOptions, samples: SampleFiles | None
) -> dict:
    device_model = f"{folder}/model{model_path.suffix.lower()}"
    shell.upload(model_path, device_model, options.timeout_seconds)
    if options.benchmark_model is not None and model_path.suffix.lower() == ".tflite":
        if samples is not None:
            cause = "benchmark_model cannot run verification samples; leave benchmark_model unset to use the runner"
            raise bench_failure(model_path, shell.target, cause)
        record = bench_with_binary(shell, folder, model_path, device_model, options)
    else:
        record = bench_with_runner(shell, folder, model_path, device_model, options, samples)
    # The device path is gone after clean-up; the record names the file the user benchmarked.
    return record | {"model": str(model_path), "device_model": device_model, "target": shell.target}


def bench_with_runner(
    shell: RemoteShell,
    folder: str,
    model_path: Path,
    device_model: str,
    options: BenchOptions,
    samples: SampleFiles | None,
) -> dict:
    for source in RUNNER_FILES:
        shell.upload(source, f"{folder}/{source.name}", HOUSEKEEPING_SECONDS)
    device_samples, device_outputs = (f"{folder}/samples.npz", f"{folder}/outputs.npz") if samples else (None, None)
    if samples is not None:
        shell.upload(samples.samples, device_samples, options.timeout_seconds)
    options = with_values_on_device(shell, folder, options)
    arguments = runner_arguments(device_model, options, device_samples, device_outputs)
    words = [options.remote_python, f"{folder}/runner.py", *arguments]
    result = run_in_background(shell, folder, words, model_path, options)
    if result.exit_code == COMMAND_NOT_FOUND:
        hint = INSTALL_HINTS.get(model_path.suffix.lower(), "pip install numpy")
        cause = (
            f"the device has no {options.remote_python!r} ({result.stderr.strip() or 'command not found'}); "
            f"install Python 3 there and then {hint}, or set remote_python to the interpreter's path"
        )
        raise bench_failure(model_path, shell.target, cause)
    completed = subprocess.CompletedProcess(words, result.exit_code, result.stdout, result.stderr)
    record = record_from_process(completed, model_path, shell.target)
    if samples is not None:
        fetch_outputs(shell, device_outputs, samples.outputs, model_path, options)
    return record


def with_values_on_device(shell: RemoteShell, folder: str, options: BenchOptions) -> BenchOptions:
    """The input value files (a sample rate, a state) copied into the folder (removed with it); the runner there
    reads those copies."""
    copies = {}
    for index, (name, local) in enumerate(sorted(options.input_values.items())):
        copies[name] = f"{folder}/input-{index}.npy"  # the input's name may hold characters a file name cannot
        shell.upload(Path(local), copies[name], options.timeout_seconds)
    return options.model_copy(update={"input_values": copies})


def fetch_outputs(shell: RemoteShell, remote: str, local: Path, model_path: Path, options: BenchOptions) -> None:
    content = shell.read_bytes(remote, options.timeout_seconds)
    if content is None:
        raise bench_failure(model_path, shell.target, f"the runner wrote no outputs file {remote}")
    local.write_bytes(content)


def bench_with_binary(
    shell: RemoteShell, folder: str, model_path: Path, device_model: str, options: BenchOptions
) -> dict:
    if options.input_values:
        cause = "benchmark_model is given no input values (--input); leave benchmark_model unset to use the runner"
        raise bench_failure(model_path, shell.target, cause)
    binary = f"{folder}/benchmark_model"
    shell.upload(options.benchmark_model, binary, options.timeout_seconds)
    shell.run(f"chmod 755 {shlex.quote(binary)}", HOUSEKEEPING_SECONDS)
    words = [binary, *benchmark_model.arguments(device_model, options)]
    result = run_in_background(shell, folder, words, model_path, options)
    if result.exit_code != 0:
        raise bench_failure(model_path, shell.target, binary_failure(result, options.benchmark_model))
    record = benchmark_model.record_from_output(result.stdout + "\n" + result.stderr, options)
    facts = benchmark_model.facts_from_output(shell.run(benchmark_model.FACTS_SCRIPT, HOUSEKEEPING_SECONDS).stdout)
    return record | facts | {"model_bytes": model_path.stat().st_size}


def binary_failure(result: CommandResult, binary: Path) -> str:
    output = (result.stderr.strip() or result.stdout.strip())[-2000:]
    if result.exit_code == NOT_EXECUTABLE:
        return f"{binary} cannot run on the device (exit 126; built for another CPU or OS?): {output}"
    return f"{binary.name} exited with code {result.exit_code}: {output}"


def background_command(folder: str, words: list[str]) -> str:
    """Run ``words`` in ``folder`` with output to files and its pid in 'pid'; print its exit code last. Where the
    device has setsid (util-linux, busybox, toybox) the job leads a process group of its own, so that stopping it
    stops whatever it started too (a job in a shell without a terminal shares the shell's group)."""
    quoted = shlex.quote(folder)
    job = f"{shlex.join(words)} > {quoted}/stdout.txt 2> {quoted}/stderr.txt"
    start = f"if command -v setsid > /dev/null; then setsid {job} & else {job} & fi"
    return f"cd {quoted} && {{ {start}; echo $! > {quoted}/pid; wait $!; echo $?; }}"


def stop_job(shell: RemoteShell, folder: str) -> None:
    """Stop the job ``background_command`` started: its process group, or the process where it has none. Closing
    the connection does not do it: without a terminal, sshd and adbd leave a command's processes running."""
    pid = f'"$(cat {shlex.quote(folder)}/pid 2> /dev/null)"'
    shell.run(f"kill -TERM -{pid} 2> /dev/null || kill -TERM {pid} 2> /dev/null; true", HOUSEKEEPING_SECONDS)


def run_in_background(
    shell: RemoteShell, folder: str, words: list[str], model_path: Path, options: BenchOptions
) -> CommandResult:
    try:
        result = shell.run(background_command(folder, words), options.timeout_seconds)
    except RemoteTimeout as error:
        stop_job(shell, folder)
        cause = f"the benchmark did not finish within timeout_seconds={options.timeout_seconds}; it was stopped"
        raise bench_failure(model_path, shell.target, cause) from error
    status = result.stdout.strip().splitlines()[-1:] or [""]
    if not status[0].isdigit():
        detail = result.stderr.strip() or result.stdout.strip() or f"exit code {result.exit_code}"
        raise bench_failure(model_path, shell.target, f"the device could not start the benchmark: {detail}")
    stdout = read_text(shell, f"{folder}/stdout.txt") or ""
    return CommandResult(int(status[0]), stdout, read_text(shell, f"{folder}/stderr.txt") or "")
