"""The adb target's protocol against a stand-in `adb` (fake_adb.py) that maps push, shell and pull onto this machine.

What this proves: the adb command lines the target builds (serial, push/pull paths, one quoted shell line), that
the device shell can run them (they go through a real `sh -c`), that records come back through `pull`, that the
folder is removed on success and on failure, that `adb devices` states become clear errors, and that
benchmark_model's log is parsed into the record. What it does not prove: anything about a real phone. Not the adb
transport or server, not Android's mksh/toybox (mktemp, kill) or SELinux rules, not whether /data/local/tmp allows
executing there, not whether a Termux Python can be reached from `adb shell`, and not the exact log of every
benchmark_model release (the stand-in prints the format documented in benchmark_model.py).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from edgepack.device_bench import BenchOptions, bench, run_on_target

from edgepack.core.errors import BenchError
from tests.device_bench.helpers import REPO, cpu_seconds, processes_mentioning

FAKE_ADB = Path(__file__).with_name("fake_adb.py")
SERIAL = "emulator-5554"
BENCHMARK_MODEL_LOG = """\
INFO: Num threads: [2]
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: Initialized session in 12.5ms.
INFO: count=9 first=2400 curr=1100 min=1050 max=2400 avg=1300 std=400 p5=1050 median=1150 p95=2400
INFO: count=50 first=1060 curr=990 min=970 max=1100 avg=1000 std=20 p5=975 median=995 p95=1080
INFO: Inference timings in us: Init: 12500, First inference: 2400, Warmup (avg): 1300, Inference (avg): 1000
INFO: Memory footprint delta from the start of the tool (MB): init=3.5 overall=4.25
INFO: Overall peak memory footprint (MB) via periodic monitoring: 10.5
"""


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """`adb` on PATH (the stand-in), one device in state 'device', its /data/local/tmp as a local folder."""
    bin_dir, device_dir = tmp_path / "bin", tmp_path / "data_local_tmp"
    bin_dir.mkdir()
    device_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f"#!{sys.executable}\n" + FAKE_ADB.read_text())
    adb.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_DEVICES", f"{SERIAL}:device,other-phone:unauthorized")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    return device_dir


def adb_calls(device_dir: Path) -> list[list[str]]:
    log = device_dir.parent / "adb.log"
    return [json.loads(line) for line in log.read_text().splitlines()]


def options_for(device_dir: Path, **changes) -> BenchOptions:
    fields = {"runs": 10, "warmup": 1, "min_seconds": 0.05, "remote_python": sys.executable}
    return BenchOptions(**fields | {"adb_device_dir": str(device_dir)} | changes)


def test_the_runner_goes_over_push_shell_pull_and_the_folder_is_removed(phone, onnx_model):
    record = bench(onnx_model, f"adb://{SERIAL}", options_for(phone))
    assert record["target"] == f"adb://{SERIAL}" and record["runtime"] == "onnxruntime" and record["runs"] >= 10
    assert record["energy"]["proxy"]["macs"] == {"fp32": 6912}
    calls = adb_calls(phone)
    assert calls[0] == ["devices"] and all(call[:2] == ["-s", SERIAL] for call in calls[1:])
    steps = [call[2] for call in calls[1:]]
    assert steps == ["shell", "push", "push", "shell", "pull", "pull", "shell"]  # mktemp, runner + model, run, rm -rf
    pushed = {Path(call[4]).name for call in calls[1:] if call[2] == "push"}
    assert pushed == {"model.onnx", "runner.py"}
    assert calls[-1][3].startswith("rm -rf -- ") and list(phone.iterdir()) == []


def test_samples_go_with_the_runner_and_their_outputs_come_back_by_pull(phone, onnx_model):
    samples = {"x": np.random.default_rng(2).standard_normal((2, 1, 3, 8, 8)).astype(np.float32)}
    run = run_on_target(onnx_model, f"adb://{SERIAL}", samples, options_for(phone, runs=1, min_seconds=0))
    on_host = run_on_target(onnx_model, "host", samples, options_for(phone, runs=1, min_seconds=0))
    assert np.array_equal(run.outputs["y"], on_host.outputs["y"]) and run.outputs["y"].shape == (2, 1, 4, 8, 8)
    calls = adb_calls(phone)[1:]  # after 'adb devices'
    pushed = {Path(call[4]).name for call in calls if call[2] == "push"}
    pulled = {Path(call[3]).name for call in calls if call[2] == "pull"}
    assert pushed == {"model.onnx", "runner.py", "samples.npz"} and "outputs.npz" in pulled
    assert list(phone.iterdir()) == []


def test_benchmark_model_output_becomes_the_record(phone, tflite_model, tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/flags\ncat <<"LOG"\n{BENCHMARK_MODEL_LOG}LOG\n')
    options = options_for(phone, benchmark_model=binary, threads=2, runs=50, warmup=3)
    record = bench(tflite_model, f"adb://{SERIAL}", options)
    assert (record["runtime"], record["delegate"], record["threads"], record["runs"]) == (
        "tflite benchmark_model", "xnnpack", 2, 50,
    )  # fmt: skip
    # The timed runs' line, not the warm-up's line of the same form before it; no p90/p99 in this log.
    latency = {"mean": 1.0, "std": 0.02, "min": 0.97, "p50": 0.995, "p90": None, "p99": None, "max": 1.1}
    assert record["latency_ms"] == latency | {"p5": 0.975, "p95": 1.08}
    assert (record["init_ms"], record["first_inference_ms"]) == (12.5, 2.4)
    assert (record["peak_rss_mib"], record["rss_growth_mib"]) == (10.5, 4.25)
    assert record["energy"]["measured"]["method"] == "no sensor"
    assert record["machine"] == platform.machine() and record["cores"] >= 1  # read from the "device"
    assert set(bench(tflite_model, "host", BenchOptions(runs=1, min_seconds=0))) <= set(record)  # the same fields
    flags = (tmp_path / "flags").read_text().split()
    assert "--num_threads=2" in flags and "--num_runs=50" in flags and "--warmup_runs=3" in flags
    assert any(flag.startswith("--graph=") and flag.endswith("/model.tflite") for flag in flags)
    assert list(phone.iterdir()) == []


def test_a_failing_benchmark_still_removes_the_folder(phone, onnx_model):
    with pytest.raises(BenchError, match="pip install numpy onnxruntime"):
        bench(onnx_model, f"adb://{SERIAL}", options_for(phone, remote_python="python3-not-installed"))
    assert list(phone.iterdir()) == []


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        ("other-phone", "has not authorized this computer: unlock it and accept"),
        ("absent-phone", "no device 'absent-phone' is connected .*emulator-5554 \\(device\\)"),
    ],
)
def test_device_states_become_clear_errors(phone, onnx_model, serial, expected):
    with pytest.raises(BenchError, match=expected):
        bench(onnx_model, f"adb://{serial}", options_for(phone))
    assert all(call == ["devices"] for call in adb_calls(phone))  # nothing was pushed or run


def test_a_missing_adb_says_where_to_get_it(onnx_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb anywhere on it
    with pytest.raises(BenchError, match="adb is not on PATH: install Android SDK Platform-Tools"):
        bench(onnx_model, "adb://anything", BenchOptions())


def test_an_interrupted_bench_stops_the_runner_on_the_phone_and_removes_its_folder(phone, onnx_model):
    """Ctrl-C stops the local adb client, not the phone's processes: only the benchmarking process gets SIGINT here
    (the stand-in adb would otherwise take it too). The runner must be stopped through a new adb shell."""
    runs = str(800_000_000 + os.getpid())  # in our runner's argv only; that many runs would take minutes
    script = (f"from edgepack.device_bench import BenchOptions, bench\n"
              f"bench({str(onnx_model)!r}, 'adb://{SERIAL}', BenchOptions(runs={runs}, min_seconds=0, "
              f"remote_python={sys.executable!r}, adb_device_dir={str(phone)!r}))\n")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
    while not (runners := processes_mentioning(f"\x00{runs}\x00")):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.1)
    while cpu_seconds(runners[0]) < 2:  # past its imports and the model's loading
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGINT)
    assert "KeyboardInterrupt" in process.communicate(timeout=120)[1]
    assert processes_mentioning(f"\x00{runs}\x00") == [] and list(phone.iterdir()) == []
