"""Frictions a first user hits, through the real command line run from another folder: a factory module beside the
recipe imports, fine-tuning says where it is in a CI log, --rebench measures again, big accuracy drops are named
without a gate, and 'edgepack stages' prints its help as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.edgepack.helpers import FAST_BENCH

REPO = Path(__file__).resolve().parents[2]

# The user's own module, next to their recipe: the same layers as tests.models.mlp, so its trained weights fit.
FACTORY_MODULE = """
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def edgepack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (stdout and stderr are pipes, not a terminal). PYTHONPATH holds only edgepack's
    checkout, never the recipe's folder: that one edgepack must add itself."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "edgepack.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def user_runs(tmp_path_factory, trained_weights):
    """A recipe whose factory lives beside it, with a fine-tuning prune stage; packed from another folder, then
    packed again with --rebench."""
    project, elsewhere = tmp_path_factory.mktemp("project"), tmp_path_factory.mktemp("elsewhere")
    (project / "my_net.py").write_text(textwrap.dedent(FACTORY_MODULE))
    recipe = {
        "name": "mine",
        "model": {"factory": "my_net:build", "weights": str(trained_weights("mlp")),
                  "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}], "output_names": ["logits"]},
        "data": {"source": "digits"},
        "stages": [{"stage": "prune", "amount": 0.5, "finetune": {"epochs": 2}}, {"stage": "export"}],
        "bench": dict(FAST_BENCH),
        "robustness": None,
    }  # fmt: skip
    path = project / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = elsewhere / "run"
    first = edgepack("pack", str(path), "--out", str(run_dir), cwd=elsewhere)
    first_results = json.loads((run_dir / "results.json").read_text()) if first.returncode == 0 else None
    again = edgepack("pack", str(path), "--out", str(run_dir), "--rebench", cwd=elsewhere)
    return first, first_results, again, run_dir


def test_a_factory_module_beside_the_recipe_imports_from_any_folder(user_runs):
    first, results, _, _ = user_runs
    assert first.returncode == 0, first.stderr
    assert results["recipe"]["model"]["factory"] == "my_net:build"
    assert [a["name"] for a in results["artifacts"]] == ["torch-fp32", "torch-pruned", "onnx-fp32"]


def test_fine_tuning_prints_epoch_lines_when_not_on_a_terminal(user_runs):
    first, _, _, _ = user_runs
    lines = [line for line in first.stderr.splitlines() if line.startswith("prune: epoch")]
    # The first epoch's end and the last are always printed; nothing between them is due within 10 s here.
    assert [line.split(",")[0] for line in lines] == ["prune: epoch 1/2", "prune: epoch 2/2"], first.stderr
    assert all(", loss " in line and line.endswith(" s") and ", ETA " in line for line in lines)
    assert lines[-1].endswith("ETA 0 s")


def test_rebench_measures_again_and_keeps_every_other_step_cached(user_runs):
    first, results, again, run_dir = user_runs
    assert again.returncode == 0, again.stderr
    rerun = json.loads((run_dir / "results.json").read_text())
    cached = {step["name"]: step["cached"] for step in rerun["steps"]}
    assert cached["bench onnx-fp32"] is False
    assert cached["prune"] and cached["export"] and cached["verify onnx-fp32"] and cached["accuracy onnx-fp32"]
    assert not rerun["all_cached"] and "every step came from the cache" not in again.stdout
    before = next(a for a in results["artifacts"] if a["name"] == "onnx-fp32")["bench"][0]["latency_ms"]
    after = next(a for a in rerun["artifacts"] if a["name"] == "onnx-fp32")["bench"][0]["latency_ms"]
    assert after != before  # measured again: timings never repeat to the last digit


def test_an_integer_file_far_below_its_float_twin_is_named_without_a_gate(full_run_dir):
    results = json.loads((full_run_dir / "results.json").read_text())
    results.pop("gate", None)
    results["recipe"]["gate"] = None
    (full_run_dir / "results.json").write_text(json.dumps(results))
    done = edgepack("report", str(full_run_dir), cwd=full_run_dir)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if "points below" in line]
    # tflite-int8 96.11% vs tflite-fp32 97.22% (1.1 points) is named; onnx-int8, 0.56 below onnx-fp32, is not.
    assert warnings == [
        "warning: tflite-int8 top-1 96.11% is 1.1 points below tflite-fp32 (97.22%); try another quantize method "
        "or calibration data, and add a gate: block (max_accuracy_drop) to fail such a run"
    ]
    assert "tflite-int8 top-1 96.11% is 1.1 points below" in (full_run_dir / "report.md").read_text()


def test_stages_help_keeps_square_brackets_and_prints_defaults_as_a_recipe_spells_them(tmp_path):
    finetune = edgepack("stages", "finetune", cwd=tmp_path)
    assert finetune.returncode == 0, finetune.stderr
    assert "[student_layer, teacher_layer] pairs whose outputs" in finetune.stdout
    qat = edgepack("stages", "qat", cwd=tmp_path)
    assert '"optimizer": "adam"' in qat.stdout and "<Optimizer" not in qat.stdout


def test_per_layer_sqnr_rows_name_the_torch_module_they_came_from(tmp_path):
    """The dynamo exporter records each node's module path; a layer_sqnr row of that node carries it, and the
    reports show it beside the node name."""
    import onnx
    import torch
    from edgepack.converters.torch_to_onnx import export_to_onnx

    from edgepack.reports.text import layer_name
    from edgepack.stages.quantize import with_torch_modules
    from tests.models import conv_net

    path = tmp_path / "conv_net.onnx"
    export_to_onnx(conv_net().eval(), (torch.zeros(1, 1, 8, 8),), path, input_names=["image"],
                   output_names=["logits"], opset=18, dynamo=True)  # fmt: skip
    model = onnx.load(path)
    gemm = next(node.name for node in model.graph.node if node.op_type == "Gemm")
    rows = [{"layer": "image", "op": None, "sqnr_db": 50.0}, {"layer": gemm, "op": "Gemm", "sqnr_db": 30.0}]
    named = with_torch_modules(rows, model)
    assert named[0] == rows[0]  # a graph input has no module
    assert named[1]["module"] == "9"  # conv_net's Linear is the Sequential's tenth child
    assert layer_name(named[1]) == f"{gemm} (9)"
