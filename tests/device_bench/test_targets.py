"""HostTarget and bench(): real runtimes in a real subprocess; structure and invariants, no latency values."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from device_bench import BenchOptions, HostTarget, bench, parse_target
from edgepack.errors import BenchError, UserError

QUICK = BenchOptions(runs=20, warmup=2, min_seconds=0.1, threads=2)
LATENCY_ORDER = ["min", "p50", "p90", "p99", "max"]


@pytest.mark.parametrize(
    ("model_fixture", "runtime", "delegate"),
    [("onnx_model", "onnxruntime", "cpu"), ("tflite_model", "ai_edge_litert", "xnnpack")],
)
def test_record_has_every_figure_and_they_agree(request, model_fixture, runtime, delegate):
    model_path = request.getfixturevalue(model_fixture)
    record = bench(model_path, "host", QUICK)
    assert record["target"] == "host"
    assert (record["runtime"], record["delegate"]) == (runtime, delegate)
    assert record["runtime_version"]
    assert record["model_bytes"] == model_path.stat().st_size
    assert (record["threads"], record["warmup"], record["seed"]) == (2, 2, 0)
    assert record["runs"] >= QUICK.runs
    latency = record["latency_ms"]
    assert [latency[key] for key in LATENCY_ORDER] == sorted(latency[key] for key in LATENCY_ORDER)
    assert latency["min"] <= latency["mean"] <= latency["max"] and latency["std"] >= 0
    assert record["init_ms"] > 0 and record["first_inference_ms"] > 0
    assert record["peak_rss_mib"] > 0 and record["rss_growth_mib"] is not None
    assert record["cores"] >= 1 and record["cpu"] and record["python"]


def test_input_shapes_and_dtypes_are_reported(onnx_model):
    record = bench(onnx_model, options=QUICK)
    assert record["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]


def test_timing_continues_until_min_seconds_have_passed(onnx_model):
    options = BenchOptions(runs=1, warmup=0, min_seconds=0.3)
    record = bench(onnx_model, options=options)
    assert record["elapsed_seconds"] >= options.min_seconds
    # The timed runs are most of that wall time; the loop's own overhead is a few perf_counter calls per run.
    assert record["runs"] * record["latency_ms"]["mean"] / 1000 >= 0.5 * options.min_seconds


def test_a_missing_model_is_a_bench_error_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(BenchError, match="nowhere.onnx") as caught:
        bench(missing, options=QUICK)
    assert "not found" in str(caught.value) and "'host'" in str(caught.value)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_a_text_file_named_like_a_model_is_a_bench_error_naming_the_file(tmp_path, suffix):
    impostor = tmp_path / f"notes{suffix}"
    impostor.write_text("this is not a model\n")
    with pytest.raises(BenchError, match=f"notes\\{suffix}.*could not load"):
        bench(impostor, options=QUICK)


def test_an_unsupported_suffix_says_what_is_allowed(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(BenchError, match=r"model\.pt.*\.tflite or \.onnx"):
        bench(weights, options=QUICK)


def test_a_runner_past_its_timeout_is_a_bench_error(tflite_model):
    with pytest.raises(BenchError, match="timeout_seconds"):
        bench(tflite_model, options=BenchOptions(min_seconds=30, timeout_seconds=0.5))


def test_host_is_parsed_to_the_host_target():
    assert isinstance(parse_target("host"), HostTarget)
    assert parse_target("host").name == "host"


@pytest.mark.parametrize("text", ["ssh://pi@raspberrypi.local:22", "adb://emulator-5554", "gpu", ""])
def test_an_unknown_target_lists_the_allowed_forms(text):
    with pytest.raises(UserError) as caught:
        parse_target(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "'host'" in message and "ssh://user@host[:port]" in message and "adb://SERIAL" in message


@pytest.mark.parametrize(
    "fields", [{"runs": 0}, {"warmup": -1}, {"threads": 0}, {"timeout_seconds": 0}, {"repeats": 3}]
)
def test_bench_options_reject_bad_and_unknown_fields(fields):
    with pytest.raises(ValidationError):
        BenchOptions(**fields)


def test_importing_device_bench_loads_no_runtime():
    runtimes = "{'tensorflow', 'onnxruntime', 'ai_edge_litert'}"
    code = f"import sys, device_bench; print(sorted({runtimes} & set(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_peak_memory_is_the_runners_own_not_its_parents(tflite_model):
    # getrusage's ru_maxrss survives exec on Linux, so a runner started from a big process would report the
    # parent's peak; this parent holds 400 MiB, far more than the runner and a 2 KB model can reach.
    parent = (
        "import json, sys, device_bench\n"
        "ballast = b'x' * (400 << 20)\n"
        "options = device_bench.BenchOptions(runs=1, warmup=0, min_seconds=0)\n"
        "print(json.dumps(device_bench.bench(sys.argv[1], options=options)))\n"
    )
    command = [sys.executable, "-c", parent, str(tflite_model)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    record = json.loads(completed.stdout)
    assert 0 < record["peak_rss_mib"] < 400
