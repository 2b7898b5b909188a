"""runner.py on its own, as a device runs it: a copy in a bare folder, with edgepack out of reach."""

from __future__ import annotations

import pytest

from tests.device_bench.helpers import run_shipped_runner

PROJECT_PACKAGES = ["edgepack", "device_bench", "converters", "calibration"]


def imported_modules(importtime_log: str) -> set[str]:
    """Top-level package names from `-X importtime` lines ("import time: self | cumulative | name")."""
    lines = [line for line in importtime_log.splitlines() if line.startswith("import time:") and "|" in line]
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines}


def test_the_runner_needs_no_edgepack_and_prefers_litert_over_tensorflow(tmp_path, tflite_model):
    arguments = [str(tflite_model), "--runs", "5", "--warmup", "1", "--min-seconds", "0", "--threads", "1"]
    record, exit_code, log = run_shipped_runner(tmp_path, arguments, blocked=PROJECT_PACKAGES)
    assert exit_code == 0, record
    assert record["runtime"] == "ai_edge_litert" and record["runs"] >= 5
    imported = imported_modules(log)
    assert {"numpy", "ai_edge_litert"} <= imported  # the log was read
    assert imported.isdisjoint({"tensorflow", "edgepack", "pydantic"})


def test_the_runner_runs_onnx_without_edgepack(tmp_path, onnx_model):
    arguments = [str(onnx_model), "--runs", "3", "--warmup", "0", "--min-seconds", "0", "--threads", "1"]
    record, exit_code, _ = run_shipped_runner(tmp_path, arguments, blocked=PROJECT_PACKAGES)
    assert exit_code == 0, record
    assert record["runtime"] == "onnxruntime" and record["delegate"] == "cpu"


@pytest.mark.parametrize(
    ("model_fixture", "missing_runtimes", "hint"),
    [
        ("tflite_model", ["ai_edge_litert", "tflite_runtime", "tensorflow"], "pip install ai-edge-litert"),
        ("onnx_model", ["onnxruntime"], "pip install onnxruntime"),
        ("onnx_model", ["numpy"], "numpy is not installed; pip install numpy"),
    ],
)
def test_without_an_interpreter_the_record_says_what_to_install(
    request, tmp_path, model_fixture, missing_runtimes, hint
):
    model_path = request.getfixturevalue(model_fixture)
    record, exit_code, _ = run_shipped_runner(tmp_path, [str(model_path)], blocked=missing_runtimes)
    assert exit_code != 0
    assert hint in record["error"]


@pytest.mark.parametrize("bad_argument", [["--runs", "0"], ["--threads", "many"], ["--unknown", "1"]])
def test_bad_arguments_still_end_as_one_error_record(tmp_path, onnx_model, bad_argument):
    record, exit_code, _ = run_shipped_runner(tmp_path, [str(onnx_model), *bad_argument], blocked=[])
    assert exit_code != 0
    assert record["error"].startswith("bad arguments")
