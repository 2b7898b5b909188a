"""runner.py on its own, as a device runs it: a copy in a bare folder, with edgepack out of reach."""

from __future__ import annotations

import re

import numpy as np
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


@pytest.mark.parametrize("model_fixture", ["tflite_model", "onnx_model"])
def test_samples_run_after_timing_give_what_the_hosts_session_gives(request, model_fixture):
    """run_on_target's outputs are the runtime's own for each sample, keyed and stacked as the samples were."""
    from edgepack.converters.runtime import open_session
    from edgepack.device_bench import BenchOptions, run_on_target

    path = request.getfixturevalue(model_fixture)
    session = open_session(path)
    (spec,) = session.inputs
    images = np.random.default_rng(1).standard_normal((3, *spec.shape)).astype(np.float32)
    run = run_on_target(path, "host", {spec.tensor_name or spec.name: images}, BenchOptions(runs=1, min_seconds=0))
    (output,) = session.outputs
    expected = np.stack([session.run({spec.name: image})[output.name] for image in images])
    assert np.array_equal(run.outputs[output.tensor_name or output.name], expected)
    assert run.record["verification"] == {"samples": 3, "outputs": {output.tensor_name or output.name: {
        "shape": list(expected.shape), "dtype": "float32"}}}  # fmt: skip
    assert run.record["os"] and run.record["runtime_build"]["wheel_tags"]


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"image": np.zeros((2, 1, 3, 8, 8), np.float32)}, r"holds arrays \['image'\]; the model's inputs are \['x'\]"),
        ({"x": np.zeros((2, 1, 3, 8, 8), np.float64)}, r"'x' is float64 \[2, 1, 3, 8, 8\]; the model takes float32"),
        ({"x": np.zeros((2, 3, 8, 8), np.float32)}, r"takes float32 \[1, 3, 8, 8\] per sample \(axis 0 counts"),
    ],
)
def test_samples_that_do_not_fit_the_model_end_as_one_error_record(tmp_path, onnx_model, arrays, expected):
    samples = tmp_path / "samples.npz"
    np.savez(samples, **arrays)
    arguments = [str(onnx_model), "--runs", "1", "--min-seconds", "0", "--samples", str(samples)]
    record, exit_code, _ = run_shipped_runner(tmp_path, arguments, blocked=PROJECT_PACKAGES)
    assert exit_code != 0 and re.search(expected, record["error"]), record
    assert not (tmp_path / "samples-outputs.npz").exists()
