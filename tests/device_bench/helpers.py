"""Helpers shared by the device_bench tests: running the shipped runner as a device would, and a tiny recipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgepack.device_bench import RUNNER_FILES

REPO = Path(__file__).resolve().parents[2]

# Run the runner with these packages made unimportable (a None entry in sys.modules makes `import` fail).
BLOCKING_LAUNCHER = (
    "import runpy, sys\n"
    "blocked, sys.argv = sys.argv[1].split(','), sys.argv[2:]\n"
    "sys.modules.update(dict.fromkeys(filter(None, blocked)))\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_shipped_runner(
    folder: Path, arguments: list[str], blocked: list[str], env: dict | None = None
) -> tuple[dict, int, str]:
    """Copy the runner's files into ``folder`` and run it there in isolated mode (-I: no cwd, no PYTHONPATH)."""
    for source in RUNNER_FILES:
        shutil.copy(source, folder / source.name)
    launcher = ["-c", BLOCKING_LAUNCHER, ",".join(blocked), str(folder / "runner.py")]
    command = [sys.executable, "-I", "-X", "importtime", *launcher, *arguments]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120, env=env)
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.returncode, completed.stderr


def conv_relu_recipe(model_path: Path, **changes) -> dict:
    """A recipe for tiny_models' conv + relu ONNX file; two thread counts, a few runs."""
    recipe = {
        "name": "conv_relu",
        "task": "other",
        "model": {"path": str(model_path), "inputs": [{"name": "x", "shape": [1, 3, 8, 8]}], "output_names": ["y"]},
        "bench": {"runs": 3, "warmup": 0, "min_seconds": 0.0, "threads": [1, 2]},
    }
    return recipe | changes


def edgepack_cli(*arguments: str) -> subprocess.CompletedProcess:
    """`edgepack ARGUMENTS...` in a subprocess, from the repository root, as a user runs it."""
    command = [sys.executable, "-m", "edgepack.cli", *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def processes_mentioning(text: str) -> list[int]:
    """The pids of the processes whose command line holds ``text`` (arguments are separated by NUL bytes)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
