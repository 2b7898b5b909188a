"""The command line as a user runs it: a real subprocess, exit codes, one-line errors, results on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.edgepack.helpers import image_recipe, write_recipe

REPO = Path(__file__).resolve().parents[2]
EDGEPACK = Path(sys.executable).parent / "edgepack"  # the installed console script


def edgepack(*args: str, script: bool = False) -> subprocess.CompletedProcess:
    # cwd = the repo, so the recipes' 'tests.models:...' factories import as they do for a user in their project.
    command = [str(EDGEPACK)] if script else [sys.executable, "-m", "edgepack.cli"]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, trained_weights):
    folder = tmp_path_factory.mktemp("cli")
    recipe = write_recipe(folder, image_recipe("mlp", trained_weights("mlp")))
    run_dir = folder / "run"
    return recipe, run_dir, edgepack("pack", str(recipe), "--out", str(run_dir), "--set", "bench.runs=3", script=True)


def test_pack_exits_zero_and_prints_the_summary(packed):
    _, run_dir, done = packed
    assert done.returncode == 0, done.stderr
    assert "tflite-fp32" in done.stdout and "ai_edge_litert" in done.stdout and f"Run folder: {run_dir}" in done.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert [a["name"] for a in results["artifacts"]] == ["torch-fp32", "onnx-fp32", "tflite-fp32"]
    assert results["recipe"]["bench"]["runs"] == 3  # --set reached the recipe
    assert (run_dir / "manifest.json").is_file() and (run_dir / "report.md").is_file()


def test_second_pack_says_nothing_changed(packed):
    recipe, run_dir, _ = packed
    again = edgepack("pack", str(recipe), "--out", str(run_dir), "--set", "bench.runs=3", "--quiet")
    assert again.returncode == 0 and "every step came from the cache" in again.stdout


def test_bad_recipe_exits_one_with_one_line_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"modle": {}}))
    done = edgepack("pack", str(path))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "unknown key 'modle'" in lines[0]
    debug = edgepack("--debug", "pack", str(path))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_missing_recipe_and_usage_errors_exit_non_zero(tmp_path):
    assert edgepack("pack", str(tmp_path / "none.yaml")).returncode == 1
    assert edgepack("pack").returncode == 2  # usage error: no recipe given


def test_bench_json_and_bad_model(packed, tmp_path):
    _, run_dir, _ = packed
    done = edgepack("bench", str(run_dir / "artifacts" / "mlp.fp32.tflite"), "--json", "--runs", "3",
                    "--min-seconds", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["runtime"] == "ai_edge_litert" and record["runs"] >= 3 and record["latency_ms"]["p50"] > 0
    fake = tmp_path / "fake.onnx"
    fake.write_text("nope")
    failed = edgepack("bench", str(fake))
    assert failed.returncode == 1 and "fake.onnx" in failed.stderr


def test_inspect_json_shows_layout_and_ops(packed):
    _, run_dir, _ = packed
    done = edgepack("inspect", str(run_dir / "artifacts" / "mlp.fp32.tflite"), "--json")
    assert done.returncode == 0, done.stderr
    description = json.loads(done.stdout)
    assert description["inputs"][0] == {"name": "image", "shape": [1, 8, 8, 1], "dtype": "float32",
                                         "layout": "NHWC", "perm_from_onnx": [0, 2, 3, 1]}  # fmt: skip
    assert description["op_counts"]["FULLY_CONNECTED"] == 2
    table = edgepack("inspect", str(run_dir / "artifacts" / "mlp.fp32.onnx"))
    assert table.returncode == 0 and "Gemm" in table.stdout and "NCHW" in table.stdout


def test_convert_onnx_to_tflite_is_verified(packed, tmp_path):
    _, run_dir, _ = packed
    out = tmp_path / "direct.tflite"
    done = edgepack("convert", str(run_dir / "artifacts" / "mlp.fp32.onnx"), "--to", "tflite", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (
        out.is_file()
        and "fp32), verified against the source: max abs error" in done.stdout
        and "<= tolerance" in done.stdout
    )


@pytest.mark.parametrize(("to", "precision"), [("tflite", "int8"), ("onnx", "int16x8")])
def test_convert_quantizes_from_a_calibration_file(packed, tmp_path, to, precision):
    import numpy as np
    from edgepack.calibration.sources import digits_split

    np.savez(tmp_path / "calib.npz", image=digits_split("train")[0][:64])
    out = tmp_path / f"mlp.{precision}.{to}"
    source = str(packed[1] / "artifacts" / "mlp.fp32.onnx")
    done = edgepack("convert", source, "--to", to, "--precision", precision, "--calib", str(tmp_path / "calib.npz"),
                    "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.is_file() and f"bytes, {precision}), verified against the source" in done.stdout
    cosine = float(done.stdout.split("cosine ")[1].split()[0])
    assert cosine > 0.99 and f"cosine {cosine:.5f} >= 0.99" in done.stdout  # in-distribution samples of the calib file
    missing = edgepack("convert", source, "--to", to, "--precision", precision, "--out", str(out))
    assert missing.returncode == 1 and "needs calibration data: --calib" in missing.stderr


def test_convert_refuses_an_integer_file_below_the_cosine_floor(packed, tmp_path):
    import numpy as np
    from edgepack.calibration.sources import digits_split

    np.savez(tmp_path / "calib.npz", image=digits_split("train")[0][:64])
    out = tmp_path / "mlp.int8.tflite"
    source = str(packed[1] / "artifacts" / "mlp.fp32.onnx")
    done = edgepack("convert", source, "--to", "tflite", "--precision", "int8", "--calib", str(tmp_path / "calib.npz"),
                    "--out", str(out), "--min-cosine", "0.9999999")  # fmt: skip
    assert done.returncode == 1 and not out.exists(), done.stdout
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: tflite-int8: cosine of output 'logits' ") and "below the floor 0.9999999" in error
    assert "per-layer SQNR in tflite-int8: " in error and "lowest " in error and " dB" in error


def test_convert_torch_file_needs_input_shapes(tmp_path):
    import torch

    from tests.models import mlp

    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(mlp().eval(), (torch.zeros(1, 1, 8, 8),)), str(path))
    missing = edgepack("convert", str(path), "--to", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert missing.returncode == 1 and "--input-shape" in missing.stderr
    done = edgepack("convert", str(path), "--to", "onnx", "--out", str(tmp_path / "m.onnx"),
                    "--input-shape", "image=1x1x8x8")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.onnx").is_file()


def test_report_rebuilds_from_results_json(packed, tmp_path):
    _, run_dir, _ = packed
    (run_dir / "report.md").unlink()
    (run_dir / "manifest.json").unlink()
    done = edgepack("report", str(run_dir))
    assert done.returncode == 0 and (run_dir / "report.md").is_file() and (run_dir / "manifest.json").is_file()
    assert edgepack("report", str(tmp_path)).returncode == 1


@pytest.mark.parametrize("command", ["pack", "bench", "inspect", "convert", "report", "gate", "demo"])
def test_every_command_has_help(command):
    done = edgepack(command, "--help")
    assert done.returncode == 0 and "Usage" in done.stdout


def test_stages_lists_every_stage_and_describes_one():
    listing = edgepack("stages")
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]
    assert names == ["prune", "low_rank", "finetune", "qat", "export", "convert", "quantize"]
    prune = edgepack("stages", "prune")
    assert prune.returncode == 0 and "amount (default 0.5)" in prune.stdout
    assert "strictly between 0 and 1" in prune.stdout
    unknown = edgepack("stages", "prun")
    assert unknown.returncode == 1 and "Did you mean 'prune'?" in unknown.stderr
