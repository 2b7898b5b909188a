"""HostTarget and bench(): real runtimes in a real subprocess; structure and invariants, no latency values."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from edgepack.device_bench import BenchOptions, bench, bench_each_thread_count, parse_target
from pydantic import ValidationError

from edgepack.core.errors import BenchError, UserError

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
    assert record["energy"]["proxy"]["uj_per_inference"] > 0
    assert record["energy"]["measured"]["method"] in ("rapl", "hwmon ina", "pi5 pmic", "no sensor")
    assert {"governor", "cpu_mhz", "temperature_c", "temperature_c_start", "throttled"} <= set(record)


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


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("host", "host"),
        (" HOST ", "host"),
        ("ssh://pi@raspberrypi.local", "ssh://pi@raspberrypi.local"),  # as written: what reports filter on
        ("ssh://pi@192.168.1.7:2222", "ssh://pi@192.168.1.7:2222"),
        ("adb://emulator-5554", "adb://emulator-5554"),
        ("adb://192.168.1.9:5555", "adb://192.168.1.9:5555"),  # a device over adb's network transport
    ],
)
def test_each_allowed_form_is_parsed_to_a_named_target(text, name):
    assert parse_target(text).name == name


@pytest.mark.parametrize(
    "text",
    ["gpu", "", "ssh://raspberrypi.local", "ssh://pi@host:99999", "ssh://pi:secret@host", "ssh://pi@host/tmp",
     "adb://", "adb://two words", "ftp://pi@host"],
)  # fmt: skip
def test_an_unknown_or_malformed_target_lists_the_allowed_forms(text):
    with pytest.raises(UserError) as caught:
        parse_target(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "'host'" in message and "'ssh://user@host[:port]'" in message and "'adb://SERIAL'" in message


def test_threads_take_a_count_a_list_or_a_comma_separated_string():
    assert BenchOptions(threads=2).thread_counts == [2]
    assert BenchOptions(threads=[1, 2, 4]).thread_counts == [1, 2, 4]
    assert BenchOptions(threads="1, 2").thread_counts == [1, 2]
    assert BenchOptions(threads=[1, 2]).with_threads(2).threads == 2


@pytest.mark.parametrize("threads", [0, [1, 0], [2, 2], [], "1,two", "-1"])
def test_bad_thread_counts_are_rejected(threads):
    with pytest.raises(ValidationError, match="thread"):
        BenchOptions(threads=threads)


def test_one_record_per_thread_count(onnx_model):
    records = bench_each_thread_count(onnx_model, "host", QUICK.model_copy(update={"threads": [1, 2]}))
    assert [record["threads"] for record in records] == [1, 2]
    assert all(record["energy"]["proxy"]["macs"] == {"fp32": 6912} for record in records)
    with pytest.raises(UserError, match="bench_each_thread_count"):
        bench(onnx_model, "host", QUICK.model_copy(update={"threads": [1, 2]}))


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
