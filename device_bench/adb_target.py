"""An Android device over adb: push, shell, pull, clean up, with the adb program from Android's platform-tools.

Two ways to measure on the phone: the Python runner, where a Python with numpy and an interpreter package is on
the adb shell's PATH (``remote_python``), or TFLite's prebuilt ``benchmark_model`` binary (``benchmark_model``).
See README.md in this folder for what the tests with a stand-in adb prove and what they do not.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgepack.device_bench.options import BenchOptions
from edgepack.device_bench.records import SampleFiles
from edgepack.device_bench.remote import CommandResult, RemoteTimeout, bench_on_remote

from edgepack.core.errors import BenchError

PLATFORM_TOOLS = "https://developer.android.com/tools/releases/platform-tools"


class AdbTarget:
    def __init__(self, serial: str):
        self.serial = serial
        self.name = f"adb://{serial}"

    def bench(self, model_path: Path, options: BenchOptions, samples: SampleFiles | None = None) -> dict:
        shell = AdbShell(find_adb(), self.serial, self.name)
        shell.check_device(options.connect_timeout_seconds)
        return bench_on_remote(shell, model_path, options, shlex.quote(options.adb_device_dir), samples)


def find_adb() -> str:
    adb = shutil.which("adb")
    if adb is None:
        raise BenchError(
            f"adb is not on PATH: install Android SDK Platform-Tools ({PLATFORM_TOOLS}) and add its folder"
        )
    return adb


def device_states(listing: str) -> dict[str, str]:
    """{serial: state} from `adb devices` ("SERIAL<TAB>device", "... unauthorized", "... offline", ...)."""
    rows = [line.split("\t", 1) for line in listing.splitlines() if "\t" in line]
    return {serial.strip(): state.strip() for serial, state in rows}


def device_problem(serial: str, state: str | None, states: dict[str, str]) -> str:
    if state is None:
        listed = ", ".join(f"{name} ({status})" for name, status in states.items()) or "none"
        return (
            f"no device {serial!r} is connected (adb devices lists: {listed}); plug it in with USB debugging on, "
            "or run 'adb connect HOST:PORT' for a device on the network"
        )
    if state == "unauthorized":
        return (
            f"device {serial!r} has not authorized this computer: unlock it and accept the 'Allow USB debugging?' "
            "prompt, then try again"
        )
    if state == "offline":
        return f"device {serial!r} is offline: reconnect it, or restart adb with 'adb kill-server'"
    return f"device {serial!r} is not ready for adb: {state}"


class AdbShell:
    """One adb call per step; ``adb shell`` joins its arguments into one line for the device's sh."""

    def __init__(self, adb: str, serial: str, target: str):
        self.adb, self.serial, self.target = adb, serial, target

    def call(self, *arguments: str, timeout: float) -> subprocess.CompletedProcess:
        command = [self.adb, "-s", self.serial, *arguments]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise RemoteTimeout(f"adb {arguments[0]} ran past {timeout} s") from error

    def check_device(self, timeout: float) -> None:
        try:
            listing = subprocess.run([self.adb, "devices"], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"adb target {self.target!r}: 'adb devices' gave no answer in {timeout} s") from error
        state = device_states(listing.stdout).get(self.serial)
        if state != "device":
            raise BenchError(
                f"adb target {self.target!r}: {device_problem(self.serial, state, device_states(listing.stdout))}"
            )

    def run(self, command: str, timeout: float) -> CommandResult:
        completed = self.call("shell", command, timeout=timeout)
        # Devices before Android 7 answer through a terminal that turns newlines into CRLF.
        return CommandResult(completed.returncode, completed.stdout.replace("\r\n", "\n"), completed.stderr)

    def upload(self, local: Path, remote: str, timeout: float) -> None:
        completed = self.call("push", str(local), remote, timeout=timeout)
        if completed.returncode != 0:
            detail = (completed.stderr or completed.stdout).strip()
            raise BenchError(f"adb target {self.target!r}: pushing {local} to {remote} failed: {detail}")

    def read_bytes(self, remote: str, timeout: float) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="edgepack-adb-") as folder:
            local = Path(folder) / Path(remote).name
            if self.call("pull", remote, str(local), timeout=timeout).returncode != 0 or not local.is_file():
                return None
            return local.read_bytes()
