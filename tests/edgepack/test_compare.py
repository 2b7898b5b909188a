"""`edgepack report RUN_A RUN_B`: what changed between two runs, matched by artifact name and (target, threads)."""

from __future__ import annotations

import json

import pytest

from edgepack.reports.compare import compare_runs
from tests.edgepack.test_cli import edgepack


def newer_run(results: dict) -> dict:
    """The fixture run after a change: no ONNX int8, a smaller TFLite int8 that is a little less accurate."""
    changed = json.loads(json.dumps(results))
    changed["run_dir"] = "/runs/after"
    changed["recipe"]["bench"]["runs"] = 50
    changed["artifacts"] = [a for a in changed["artifacts"] if a["name"] != "onnx-int8"]
    int8 = changed["artifacts"][-1]
    int8["bytes"], int8["accuracy"]["top1"] = 3046, 0.95
    int8["bench"][0]["latency_ms"]["p50"] = 0.0042
    int8["bench"] = int8["bench"][:2]
    return changed


def test_changes_in_accuracy_size_latency_and_recipe(full_results):
    comparison = compare_runs(full_results, newer_run(full_results))
    assert comparison["recipe_changes"] == [{"key": "bench.runs", "before": 200, "after": 50}]
    changes = {c["artifact"]: c for c in comparison["artifacts"]}
    assert list(changes) == ["torch-fp32", "onnx-fp32", "tflite-fp32", "tflite-int8", "onnx-int8"]
    assert changes["onnx-int8"]["status"] == "removed" and changes["tflite-fp32"]["top1"]["change"] == 0
    int8 = changes["tflite-int8"]
    assert int8["top1"]["change"] == pytest.approx((0.95 - 0.9611111) * 100, abs=1e-4) and int8["top1"]["unit"] == "pp"
    assert int8["bytes"]["change"] == pytest.approx((3046 / 3384 - 1) * 100)
    host, two_threads, phone = int8["latency_p50_ms"]
    assert (host["target"], host["threads"], host["change"]) == ("host", 1, pytest.approx(100.0))  # 0.0021 -> 0.0042
    assert two_threads["change"] == 0 and (phone["target"], phone["after"], phone["change"]) == (
        "adb://emulator-5554", None, None)  # fmt: skip


def test_report_with_two_runs_prints_and_writes_the_comparison(full_run_dir, full_results, tmp_path):
    after = tmp_path / "after"
    after.mkdir()
    (after / "results.json").write_text(json.dumps(newer_run(full_results)))
    done = edgepack("report", str(full_run_dir), str(after))
    assert done.returncode == 0, done.stderr
    assert "tflite-int8" in done.stdout and "-1.11 pp" in done.stdout and "bench.runs" in done.stdout
    markdown = (after / "comparison.md").read_text()
    assert "- `bench.runs`: 200 -> 50" in markdown
    assert "| tflite-int8 | kept | 96.11% -> 95.00% (-1.11 pp) | 3,384 -> 3,046 (-9.99%) | host x1 |" in markdown
    assert json.loads((after / "comparison.json").read_text())["after"] == "/runs/after"
    assert edgepack("report", str(full_run_dir), str(after), str(after)).returncode == 2  # one or two runs


def test_recipe_changes_are_the_keys_the_user_wrote_not_the_defaults_they_expand_to(full_results):
    """Adding a quantize stage, lowering bench.runs and switching robustness off: three things the user did, not
    the quantize stage's thirty-odd defaults."""
    from edgepack.recipe import parse_recipe

    def run(recipe: dict) -> dict:
        parsed = parse_recipe(recipe)
        return full_results | {"recipe": parsed.model_dump(mode="json"),
                               "recipe_given": parsed.model_dump(mode="json", exclude_unset=True)}  # fmt: skip

    model = {"factory": "tests.models:mlp", "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}]}
    before = {"model": model, "stages": [{"stage": "export"}, {"stage": "convert"}]}
    after = before | {"stages": [*before["stages"], {"stage": "quantize", "method": "entropy"}],
                      "bench": {"runs": 20}, "robustness": None}  # fmt: skip
    changes = compare_runs(run(before), run(after))["recipe_changes"]
    assert {c["key"]: (c["before"], c["after"]) for c in changes} == {
        "stages.2.stage": (None, "quantize"),
        "stages.2.method": (None, "entropy"),
        "bench.runs": (50, 20),
        "robustness.snr_db": ([30, 20, 10], None),
        "robustness.brightness": (0.1, None),
        "robustness.contrast": (0.8, None),
        "robustness.max_samples": (1000, None),
    }
