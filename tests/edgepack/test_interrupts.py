"""Interrupts, kills and concurrent runs of a real `python -m edgepack.cli pack` (issue 16).

How the tests know where a signal lands: with EDGEPACK_TEST_PAUSE_AT=STEP the pipeline touches
EDGEPACK_TEST_PAUSE_FILE on entering that step and waits there (edgepack/running/interrupts.py); with
EDGEPACK_TEST_PAUSE_AT=torch.export the model itself waits inside torch.export (tests/models.py), so the signal lands
in the exporter's own code with the ONNX temp file open. A test waits for the file, then signals. Ctrl-C is sent as a
terminal sends it: SIGINT to the whole process group.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.edgepack.helpers import FAST_BENCH, image_recipe, write_recipe
from tests.edgepack.test_cli import REPO

ARTIFACT_SUFFIXES = {".onnx", ".tflite"}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, trained_weights) -> Path:
    stages = ["export", {"stage": "quantize", "formats": ["onnx"]}]
    body = image_recipe("mlp_pausing_in_export", trained_weights("mlp"), robustness=None, stages=stages)
    return write_recipe(tmp_path_factory.mktemp("interrupts"), body | {"bench": dict(FAST_BENCH)})


@pytest.fixture(scope="module")
def reference_run(recipe, tmp_path_factory) -> Path:
    """One uninterrupted run (umask 022)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _finish(recipe, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[str, str]:
    """The artifacts of the uninterrupted run: {relative path: sha256}."""
    return _artifact_hashes(reference_run)


def _start(recipe: Path, run_dir: Path, pause_at: str | None = None) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    if pause_at is not None:
        env |= {"EDGEPACK_TEST_PAUSE_AT": pause_at, "EDGEPACK_TEST_PAUSE_FILE": str(_marker(run_dir))}
        _marker(run_dir).unlink(missing_ok=True)
    command = [sys.executable, "-m", "edgepack.cli", "pack", str(recipe), "--out", str(run_dir), "--quiet"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, umask=0o022)  # fmt: skip


def _marker(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.paused"


def _wait_until_paused(process: subprocess.Popen, run_dir: Path) -> None:
    while not _marker(run_dir).exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before pausing: {process.stderr.read()}")
        time.sleep(0.1)


def _interrupt_at(recipe: Path, run_dir: Path, pause_at: str, how: signal.Signals) -> subprocess.CompletedProcess:
    process = _start(recipe, run_dir, pause_at)
    _wait_until_paused(process, run_dir)
    os.killpg(process.pid, how)  # the group, as a terminal's Ctrl-C
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _finish(recipe: Path, run_dir: Path) -> None:
    process = _start(recipe, run_dir)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr


def _artifact_hashes(run_dir: Path) -> dict[str, str]:
    files = [p for p in run_dir.rglob("*") if p.suffix in ARTIFACT_SUFFIXES and ".cache" not in p.parts]
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _temp_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_interrupted_and_killed_runs_resume_to_the_same_files(recipe, reference, tmp_path):
    """One run folder through Ctrl-C and SIGKILL in export, quantize and bench; each run resumes from the cache of
    the ones before, so each pause is reached in the step named; the run that finishes writes the reference's files."""
    run_dir = tmp_path / "run"
    _interrupt_at(recipe, run_dir, "torch.export", signal.SIGKILL)
    (left,) = _temp_files(run_dir)  # the ONNX file being exported: left behind by the killed run
    assert left.stat().st_size == 0
    _ctrl_c_at(recipe, run_dir, "torch.export", "export")
    assert _temp_files(run_dir) == []  # the stale one removed at the start, its own on the way out
    assert _interrupt_at(recipe, run_dir, "quantize", signal.SIGKILL).returncode == -signal.SIGKILL
    _ctrl_c_at(recipe, run_dir, "quantize", "quantize")
    _ctrl_c_at(recipe, run_dir, "bench onnx-int8", "bench onnx-int8")
    _finish(recipe, run_dir)
    assert _artifact_hashes(run_dir) == reference and len(reference) == 2  # onnx-fp32 and onnx-int8
    assert _temp_files(run_dir) == []


def _ctrl_c_at(recipe: Path, run_dir: Path, pause_at: str, step: str) -> None:
    done = _interrupt_at(recipe, run_dir, pause_at, signal.SIGINT)
    assert (done.returncode, done.stdout) == (130, ""), done.stderr
    assert done.stderr == f"interrupted during {step}; re-run to resume\n"  # nothing else: no exporter advice, no log
    assert _temp_files(run_dir) == []


def test_a_second_pack_into_the_same_folder_stops_naming_the_first(recipe, tmp_path):
    run_dir = tmp_path / "run"
    first = _start(recipe, run_dir, pause_at="torch.export")  # holds the run folder's lock while it waits
    try:
        _wait_until_paused(first, run_dir)
        second = subprocess.run([sys.executable, "-m", "edgepack.cli", "pack", str(recipe), "--out", str(run_dir)],
                                cwd=REPO, capture_output=True, text=True, timeout=600,
                                env=os.environ | {"PYTHONPATH": str(REPO)})  # fmt: skip
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=120)
    assert second.returncode == 1, second.stderr
    assert second.stderr == (
        f"error: the run folder {run_dir} is in use by another edgepack pack (pid {first.pid}); wait for it to end, "
        "or give this run another --out\n"
    )
    assert first.returncode == 130  # the first run was not disturbed by the second: it ended by our Ctrl-C


def test_run_files_follow_the_umask(tmp_path):
    from edgepack.core.artifacts import write_text_atomic

    for umask, mode in [(0o022, 0o644), (0o027, 0o640)]:
        old = os.umask(umask)
        try:
            write_text_atomic(tmp_path / f"results-{umask:o}.json", "{}")
        finally:
            os.umask(old)
        assert (tmp_path / f"results-{umask:o}.json").stat().st_mode & 0o777 == mode


def test_a_whole_run_is_readable_by_the_group_under_umask_022(reference_run):
    modes = {str(p.relative_to(reference_run)): p.stat().st_mode & 0o777 for p in reference_run.rglob("*")
             if p.is_file()}  # fmt: skip
    assert {path for path, mode in modes.items() if mode != 0o644} == set(), modes
    assert {"results.json", "report.html", "mlp_pausing_in_export.int8.onnx"} <= {Path(p).name for p in modes}
