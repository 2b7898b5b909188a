"""The emulated Raspberry Pi of scripts/emulated-pi, for the emulated_pi test tier, and a way to spoil a model file.

The script is run as a user runs it (``start --json``); the tests stop the instance only when they started it.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgepack.device_bench import BenchOptions

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "emulated-pi"
# A cold build of the root takes about 11 minutes on 2 busy cores; a built root starts in about a second.
START_TIMEOUT_SECONDS = 3600


@dataclass
class EmulatedPi:
    info: dict  # what `scripts/emulated-pi start --json` printed

    @property
    def target(self) -> str:
        return self.info["target"]

    def options(self, **changes) -> BenchOptions:
        fields = {"runs": 5, "warmup": 1, "min_seconds": 0.0, "remote_python": self.info["remote_python"]}
        fields |= {"ssh_identity_file": self.info["identity_file"], "ssh_known_hosts": self.info["known_hosts"]}
        return BenchOptions(**fields | changes)

    def host_path(self, device_path: str) -> Path:
        """Where a path on the Pi is on this machine (the Pi's / is the root folder)."""
        return Path(self.info["root"]) / device_path.lstrip("/")


def script_env() -> dict[str, str]:
    """The user's environment: tests/conftest.py points HOME into the venv, which would put the ~700 MB root
    (and its build) there instead of the user's cache folder; EDGEPACK_PI_CACHE, when set, still decides."""
    return os.environ | {"HOME": pwd.getpwuid(os.getuid()).pw_dir}


def run_script(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [str(SCRIPT), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=script_env())


def start() -> EmulatedPi:
    done = run_script("start", "--json", timeout=START_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/emulated-pi start failed: {done.stderr.strip()}")
    return EmulatedPi(json.loads(done.stdout))


def stop() -> None:
    run_script("stop")


def largest_constant(path: Path) -> np.ndarray:
    """The largest weight tensor of an .onnx or .tflite file, as stored in it."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        return max((numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer), key=lambda a: a.nbytes)
    from edgepack.converters.runtime import load_tflite_interpreter

    interpreter, _, _ = load_tflite_interpreter(path, default_delegates=False)
    interpreter.allocate_tensors()
    # A constant is read by an op but written by none and fed by no one.
    ops = interpreter._get_ops_details()
    written = {index for op in ops for index in op["outputs"]} | {d["index"] for d in interpreter.get_input_details()}
    constants = {index for op in ops for index in op["inputs"] if index >= 0} - written
    return max((interpreter.get_tensor(index) for index in constants), key=lambda a: a.nbytes)


def edit_one_weight(source: Path, out: Path) -> Path:
    """A copy of ``source`` with one element of its largest weight tensor changed in the file's bytes: what a
    corrupted copy or a wrong build on a device would hold. Returns ``out``."""
    weights = largest_constant(source)
    content = source.read_bytes()
    assert content.count(weights.tobytes()) == 1, "the weights' bytes must be found once to edit them"
    changed = weights.copy()
    first = changed.flat[0]
    # A float weight grows by 1 (weights here are ~0.1); an int8 weight jumps across the grid.
    changed.flat[0] = first + 1.0 if changed.dtype.kind == "f" else (-100 if first > 0 else 100)
    out.write_bytes(content.replace(weights.tobytes(), changed.tobytes()))
    return out
