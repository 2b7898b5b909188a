"""The CI gate: each budget passes and fails on the figures in results.json, one line per violated budget, exit
codes from the command line, and a recipe gate that makes 'edgepack pack' exit 1."""

from __future__ import annotations

import json
import shutil

import pytest

from edgepack.core.errors import RecipeError, UserError
from edgepack.recipe import parse_recipe
from edgepack.reports.gate import GateConfig, evaluate_gate, human_bytes, outcome_lines, parse_size
from tests.edgepack.test_cli import edgepack


def violations(results: dict, **budgets) -> list[tuple[str, str]]:
    outcome = evaluate_gate(results, GateConfig(**budgets))
    assert outcome["passed"] == (not outcome["violations"])
    return [(v["artifact"], v["budget"]) for v in outcome["violations"]]


@pytest.mark.parametrize(
    "text, expected", [("2MB", 2_000_000), ("512KiB", 524_288), ("1.5 mb", 1_500_000), (1000, 1000), ("42", 42)]
)
def test_sizes_read_in_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


def test_accuracy_drop_budget_in_percentage_points(full_results):
    # Drops from 97.22%: onnx-int8 0.56 pp, tflite-int8 1.11 pp, the float artifacts 0.
    assert violations(full_results, max_accuracy_drop=1.2) == []
    assert violations(full_results, max_accuracy_drop=0.5) == [
        ("onnx-int8", "max_accuracy_drop_pp"),
        ("tflite-int8", "max_accuracy_drop_pp"),
    ]


def test_latency_budget_checks_every_record_of_the_chosen_target(full_results):
    # p50s: onnx-fp32 0.0103, tflite-fp32 0.0026, onnx-int8 0.0131, tflite-int8 0.0021/0.0027 on host, 0.02 on adb.
    assert violations(full_results, max_latency_ms=0.025) == []
    assert violations(full_results, max_latency_ms=0.012, target="host") == [("onnx-int8", "max_latency_ms")]
    assert violations(full_results, max_latency_ms=0.012) == [("onnx-int8", "max_latency_ms"),
                                                              ("tflite-int8", "max_latency_ms")]  # fmt: skip
    # benchmark_model on the phone gives no p90: a budget on it fails rather than passes unmeasured.
    outcome = evaluate_gate(
        full_results, GateConfig(max_latency_ms=1, latency_statistic="p90", target="adb://emulator-5554")
    )
    assert [v["value"] for v in outcome["violations"]] == [None, None, None, None]
    assert "latency p90 not measured on adb://emulator-5554" in outcome["violations"][-1]["message"]


def test_robustness_budget_compares_each_perturbation_with_the_source_under_the_same_one(full_results):
    # Worst perturbation for both int8 files: noise 10 dB, 76.39% for the source; onnx-int8 55.67% (20.72 pp
    # below), tflite-int8 51.11% (25.28 pp); the float files match the source under every perturbation.
    assert violations(full_results, max_robustness_drop=25.3) == []
    assert violations(full_results, max_robustness_drop=21) == [("tflite-int8", "max_robustness_drop_pp")]
    outcome = evaluate_gate(full_results, GateConfig(max_robustness_drop=0))
    drops = [(v["artifact"], round(v["value"], 2)) for v in outcome["violations"]]
    assert drops == [("onnx-int8", 20.72), ("tflite-int8", 25.28)]
    assert outcome_lines(outcome)[1] == ("gate failed: tflite-int8: top-1 under noise 10 dB 25.28 pp below the "
                                         "source model's (76.39% -> 51.11%) exceeds the budget 0 pp")  # fmt: skip
    assert "top-1 drop under perturbations <= 30 pp" in outcome_lines(
        evaluate_gate(full_results, GateConfig(max_robustness_drop=30)))[0]  # fmt: skip


def test_robustness_budget_fails_where_robustness_was_not_measured(full_results):
    del full_results["artifacts"][4]["robustness"]  # tflite-int8
    outcome = evaluate_gate(full_results, GateConfig(max_robustness_drop=50))
    assert [(v["artifact"], v["value"]) for v in outcome["violations"]] == [("tflite-int8", None)]
    assert "top-1 under perturbations was not measured" in outcome["violations"][0]["message"]


def test_size_budget(full_results):
    assert violations(full_results, max_bytes="20kB") == []
    assert violations(full_results, max_bytes="7KB") == [("onnx-fp32", "max_bytes"), ("tflite-fp32", "max_bytes")]


def test_artifacts_can_be_picked_and_unknown_names_are_refused(full_results):
    assert violations(full_results, max_bytes=1000, artifacts=["tflite-int8"]) == [("tflite-int8", "max_bytes")]
    with pytest.raises(UserError, match="no artifact named tflite-int4 in this run; it has torch-fp32"):
        evaluate_gate(full_results, GateConfig(max_bytes=1000, artifacts=["tflite-int4"]))


def test_one_line_per_violated_budget(full_results):
    outcome = evaluate_gate(full_results, GateConfig(max_accuracy_drop=0.5, max_bytes="7KB"))
    assert outcome_lines(outcome) == [
        "gate failed: onnx-fp32: size 14.64 kB (14,643 bytes) exceeds the budget 7.00 kB (7,000 bytes)",
        "gate failed: tflite-fp32: size 7.61 kB (7,612 bytes) exceeds the budget 7.00 kB (7,000 bytes)",
        "gate failed: onnx-int8: top-1 drop 0.56 pp (97.22% -> 96.67%) exceeds the budget 0.5 pp",
        "gate failed: tflite-int8: top-1 drop 1.11 pp (97.22% -> 96.11%) exceeds the budget 0.5 pp",
    ]


@pytest.mark.parametrize(
    "gate, message",
    [
        ({}, "a gate needs at least one of max_accuracy_drop, max_robustness_drop, max_latency_ms, max_bytes"),
        ({"max_bytes": "2 parsecs"}, "'2 parsecs' is not a size"),
        ({"max_latency": 10}, "unknown key 'gate.max_latency' \\(did you mean 'max_latency_ms'\\?\\)"),
        ({"max_bytes": 10, "latency_statistic": "p95"}, "gate.latency_statistic"),
    ],
)
def test_bad_gate_blocks_in_a_recipe_are_refused(gate, message):
    recipe = {"model": {"path": "m.onnx", "inputs": [{"name": "x", "shape": [1, 4]}]}, "gate": gate}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(recipe)


def test_gate_command_exit_codes(full_run_dir):
    passed = edgepack("gate", str(full_run_dir), "--max-accuracy-drop", "1.2", "--max-bytes", "2MB",
                      "--max-latency-ms", "10", "--target", "host")  # fmt: skip
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("gate passed: onnx-fp32, tflite-fp32, onnx-int8, tflite-int8 within")
    failed = edgepack("gate", str(full_run_dir), "--max-accuracy-drop", "0.5", "--artifact", "tflite-int8",
                      "--max-latency-ms", "0.002", "--max-robustness-drop", "25")  # fmt: skip
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == [
        "gate failed: tflite-int8: top-1 drop 1.11 pp (97.22% -> 96.11%) exceeds the budget 0.5 pp",
        "gate failed: tflite-int8: top-1 under noise 10 dB 25.28 pp below the source model's (76.39% -> 51.11%) "
        "exceeds the budget 25 pp",
        "gate failed: tflite-int8: latency p50 0.0021 ms on host with 1 thread(s) exceeds the budget 0.002 ms",
        "gate failed: tflite-int8: latency p50 0.0027 ms on host with 2 thread(s) exceeds the budget 0.002 ms",
        "gate failed: tflite-int8: latency p50 0.02 ms on adb://emulator-5554 with 1 thread(s) exceeds the budget "
        "0.002 ms",
    ]


def test_gate_command_uses_the_recipes_gate_and_flags_replace_its_keys(full_run_dir, tmp_path):
    recipe_gate = edgepack("gate", str(full_run_dir))  # the fixture's recipe gate fails on tflite-int8
    assert recipe_gate.returncode == 1 and len(recipe_gate.stdout.splitlines()) == 2
    loosened = edgepack("gate", str(full_run_dir), "--max-accuracy-drop", "2", "--max-latency-ms", "1")
    assert loosened.returncode == 0, loosened.stdout
    results = json.loads((full_run_dir / "results.json").read_text())
    results["recipe"]["gate"] = None
    (tmp_path / "results.json").write_text(json.dumps(results))
    nothing = edgepack("gate", str(tmp_path))
    assert nothing.returncode == 1 and "edgepack gate:" in nothing.stderr and "at least one of" in nothing.stderr


def test_a_failed_recipe_gate_makes_pack_exit_one_after_writing_everything(digits_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(digits_run.run_dir, run_dir)  # with its cache: every step is found, only the gate is new
    done = edgepack("pack", str(run_dir / "recipe.yaml"), "--out", str(run_dir), "--quiet",
                    "--set", "gate.max_bytes=1KB", "--set", "gate.max_accuracy_drop=5")  # fmt: skip
    assert done.returncode == 1, done.stderr
    sizes = {a["name"]: a["bytes"] for a in digits_run.artifacts}
    assert [line for line in done.stdout.splitlines() if line.startswith("gate ")] == [
        f"gate failed: {name}: size {human_bytes(sizes[name])} exceeds the budget 1.00 kB (1,000 bytes)"
        for name in ("onnx-fp32", "tflite-fp32")
    ]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["all_cached"], [step for step in results["steps"] if not step["cached"]]
    assert results["gate"]["passed"] is False
    assert results["gate"]["budgets"] == {"max_accuracy_drop": 5.0, "latency_statistic": "p50", "max_bytes": 1000}
    assert "**Gate failed**" in (run_dir / "report.md").read_text()
    assert 'gate <span class="badge fail">' in (run_dir / "report.html").read_text()
