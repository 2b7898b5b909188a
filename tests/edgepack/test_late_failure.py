"""A run that fails after loading keeps what it measured (issue 16): results.json and the reports with the figures
taken before the failure, ``status: failed`` and the failure's step and error; no manifest; the error still raised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepack.core.errors import BenchError, UnsupportedOperatorError
from edgepack.recipe import parse_recipe
from edgepack.running.pipeline import pack
from tests.edgepack.helpers import FAST_BENCH, image_recipe

UNREACHABLE = "ssh://nobody@127.0.0.1:9"  # the discard port: nothing listens there, the connection is refused


def _untrained(name: str, **extra) -> dict:
    recipe = image_recipe(name, Path("unused"), robustness=None, **extra)
    del recipe["model"]["weights"]  # the factory's own initial weights: what is measured is the run, not the model
    return recipe


def _outputs(run_dir: Path) -> tuple[dict, str, str]:
    return (json.loads((run_dir / "results.json").read_text()), (run_dir / "report.md").read_text(),
            (run_dir / "report.html").read_text())  # fmt: skip


def test_an_int16x8_refusal_in_quantize_keeps_the_float_figures(tmp_path):
    stages = ["export", {"stage": "quantize", "precision": "int16x8"}]  # depthwise_net's hard-swish: refused
    with pytest.raises(UnsupportedOperatorError) as caught:
        pack(parse_recipe(_untrained("depthwise_net", stages=stages)), out=tmp_path / "run", quiet=True)
    results, markdown, html = _outputs(tmp_path / "run")
    assert results["status"] == "failed"
    assert results["failure"] == {"step": "quantize", "error": str(caught.value)}
    assert [a["name"] for a in results["artifacts"]] == ["torch-fp32", "onnx-fp32"]
    onnx = results["artifacts"][1]
    assert onnx["verification"]["passed"] and onnx["accuracy"]["samples"] > 0 and onnx["bench"] == []
    assert f"**Run failed.** The run failed in step quantize: {caught.value}." in markdown
    assert "<b>Run failed.</b> The run failed in step quantize" in html
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_an_unreachable_ssh_target_keeps_the_host_figures(tmp_path):
    recipe = _untrained("mlp", stages=["export"], targets=["host", UNREACHABLE], bench=dict(FAST_BENCH))
    with pytest.raises(BenchError, match="cannot reach 127.0.0.1:9"):
        pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    results, markdown, _ = _outputs(tmp_path / "run")
    assert results["failure"]["step"] == f"bench onnx-fp32 {UNREACHABLE} threads=1"
    (host,) = results["artifacts"][1]["bench"]  # measured before the ssh target was tried
    assert host["target"] == "host" and host["latency_ms"]["p50"] > 0
    assert "| onnx-fp32 | host |" in markdown
