"""Benchmarks reached from a recipe and from the command line: one record per (artifact, target, thread count)."""

from __future__ import annotations

import json

import pytest

import edgepack
from edgepack.core.errors import RecipeError
from edgepack.recipe import apply_override, parse_recipe
from tests.device_bench.helpers import conv_relu_recipe, edgepack_cli


@pytest.fixture(scope="module")
def packed(tmp_path_factory, onnx_model):
    out = tmp_path_factory.mktemp("bench_pipeline") / "run"
    return out, edgepack.pack(parse_recipe(conv_relu_recipe(onnx_model)), out=out, quiet=True)


def test_each_artifact_gets_a_record_per_thread_count(packed):
    _, result = packed
    for artifact in result.artifacts:
        records = artifact["bench"]
        assert [(r["target"], r["threads"]) for r in records] == [("host", 1), ("host", 2)], artifact["name"]
        assert all(r["model_bytes"] == artifact["bytes"] for r in records)
        assert all(r["energy"]["proxy"]["macs"] == {"fp32": 6912} for r in records)
    steps = [step["name"] for step in result.results["steps"] if step["name"].startswith("bench")]
    assert steps == [f"bench {name} host threads={n}" for name in ("onnx-fp32", "tflite-fp32") for n in (1, 2)]


def test_the_report_has_a_latency_row_per_record(packed):
    out, _ = packed
    rows = [line for line in (out / "report.md").read_text().splitlines() if "| host |" in line]
    assert len(rows) == 4
    assert [row.split(" | ")[3] for row in rows] == ["1", "2", "1", "2"]  # the threads column


def test_a_second_run_takes_every_record_from_the_cache(packed, onnx_model):
    out, first = packed
    again = edgepack.pack(parse_recipe(conv_relu_recipe(onnx_model)), out=out, quiet=True)
    assert again.results["all_cached"]
    assert [a["bench"] for a in again.artifacts] == [a["bench"] for a in first.artifacts]


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["host", "ftp://pi@board"], "'targets'.*unknown benchmark target 'ftp://pi@board'.*'adb://SERIAL'"),
        (["host", "host"], "'targets'.*each once"),
        ([], "'targets'.*at least one"),
    ],
)
def test_recipe_targets_are_checked_when_the_recipe_loads(onnx_model, targets, expected):
    with pytest.raises(RecipeError, match=expected):
        parse_recipe(conv_relu_recipe(onnx_model, targets=targets))


def test_threads_can_be_set_as_a_list_from_the_command_line(onnx_model):
    data = conv_relu_recipe(onnx_model)
    apply_override(data, "bench.threads=1,2,4")  # how `edgepack pack --set bench.threads=1,2,4` arrives
    assert parse_recipe(data).bench.thread_counts == [1, 2, 4]
    apply_override(data, "targets=[host, 'ssh://pi@raspberrypi.local:2222', 'adb://emulator-5554']")
    assert parse_recipe(data).targets[1] == "ssh://pi@raspberrypi.local:2222"


def test_cli_gives_a_record_per_thread_count(onnx_model):
    done = edgepack_cli("bench", str(onnx_model), "--threads", "1,2", "--runs", "3", "--min-seconds", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert [record["threads"] for record in json.loads(done.stdout)] == [1, 2]
    table = edgepack_cli("bench", str(onnx_model), "--threads", "1,2", "--runs", "3", "--min-seconds", "0")
    assert table.returncode == 0 and "2 thread(s)" in table.stdout and "energy proxy uJ" in table.stdout


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--threads", "0"], "at least 1"),
        (["--target", "gpu"], "unknown benchmark target 'gpu'; allowed forms: 'host', 'ssh://user@host[:port]'"),
    ],
)
def test_cli_bad_bench_options_are_one_line_errors(onnx_model, arguments, expected):
    done = edgepack_cli("bench", str(onnx_model), *arguments)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and expected in lines[0]
