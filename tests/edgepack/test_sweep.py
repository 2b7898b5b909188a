"""edgepack sweep without Ray running: the grid (validated as --set is), the missing-Ray message, the bench lock, the
summary (Pareto front, best per gate budget) and sweep.html. The sweeps on Ray are in test_sweep_ray.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgepack.core.errors import RecipeError, UserError
from edgepack.reports.sweep_page import render_sweep_html
from edgepack.reports.sweep_summary import best_per_budget, pareto_front, points, sweep_summary
from edgepack.running.bench_guard import benches_serialised, guarded
from edgepack.sweeps.variants import expand, parse_grid
from tests.edgepack.helpers import image_recipe, write_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def recipe(tmp_path) -> Path:
    return write_recipe(tmp_path, image_recipe("conv_net", tmp_path / "w.pt", stages=[{"stage": "export"}]))


def test_grid_crosses_every_value_of_every_key(recipe):
    variants = expand([recipe], parse_grid(["stages.0.opset=17,18", "bench.runs=3, 5"]))
    assert [v.overrides for v in variants] == [
        ["stages.0.opset=17", "bench.runs=3"], ["stages.0.opset=17", "bench.runs=5"],
        ["stages.0.opset=18", "bench.runs=3"], ["stages.0.opset=18", "bench.runs=5"],
    ]  # fmt: skip
    assert variants[3].name == "conv_net--opset=18,runs=5" and variants[3].recipe.stages[0].opset == 18
    assert variants[3].recipe.bench.runs == 5 and variants[3].grid == {"stages.0.opset": "18", "bench.runs": "5"}
    assert set(variants[0].inputs) == {"model.weights"}  # the file a cluster worker is sent
    assert len({v.key for v in variants}) == 4


def test_bad_grid_keys_fail_as_set_does_naming_the_grid(recipe):
    with pytest.raises(RecipeError, match=r"--grid stages.5.opset: '5' is not an index of a list of 1 items"):
        expand([recipe], parse_grid(["stages.5.opset=17"]))
    with pytest.raises(RecipeError, match=r"with --grid bench.runz=3: .*recipe.yaml: unknown key 'bench.runz'"):
        expand([recipe], parse_grid(["bench.runz=3"]))
    with pytest.raises(RecipeError, match=r"opset"):  # a value outside the allowed range, before anything runs
        expand([recipe], parse_grid(["stages.0.opset=12,18"]))
    with pytest.raises(UserError, match=r"expected KEY=v1,v2"):
        parse_grid(["stages.0.opset"])
    with pytest.raises(UserError, match=r"given twice"):
        parse_grid(["bench.runs=1", "bench.runs=2"])


def test_sweep_without_ray_says_how_to_install_it(recipe):
    """Ray hidden from the import system, as on an install without the extra: one line naming the extra, exit 1."""
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['edgepack', 'sweep', sys.argv[1], '--grid', "
            "'bench.runs=3,5', '--out', sys.argv[2]]; from edgepack.cli import main; main()")  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, str(recipe), str(recipe.parent / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: edgepack sweep runs its variants on Ray, which is not")
    assert "pip install 'edgepack[ray]'" in lines[0]


def test_import_edgepack_never_imports_ray():
    code = "import sys, edgepack, edgepack.cli, edgepack.sweeps; print('ray' in sys.modules, callable(edgepack.sweep))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_host_benches_take_turns_on_the_lock_and_device_benches_do_not_wait(tmp_path):
    """Two threads benchmarking at once under one lock file: their windows never overlap (each open of the file is
    locked apart, as two worker processes are). A device benchmark does not take the host lock."""

    def slow_bench() -> dict:
        time.sleep(0.2)
        return {}

    with benches_serialised(tmp_path / "host.lock") as guard:
        runs = [guarded("host", slow_bench) for _ in range(3)] + [guarded("ssh://pi@board", slow_bench)]
        threads = [threading.Thread(target=run) for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    host = sorted((w["started"], w["finished"]) for w in guard.windows if w["target"] == "host")
    assert len(host) == 3 and all(end <= next_start for (_, end), (next_start, _) in zip(host, host[1:], strict=False))
    assert [w["target"] for w in guard.windows].count("ssh://pi@board") == 1
    assert guarded("host", slow_bench) is slow_bench  # outside a sweep the pipeline's bench runs as it was


def _row(name: str, artifacts: list[tuple], status: str = "ok", gate: dict | None = None) -> dict:
    return {"name": name, "grid": {"k": name}, "status": status, "error": None if status == "ok" else "boom",
            "source_top1": 0.95, "gate": gate, "node_id": "abcdef123456", "node_ip": "127.0.0.1",
            "bench_started": 1.0, "bench_finished": 2.0,
            "artifacts": [{"name": n, "format": f, "precision": "fp32", "sha256": "0", "bytes": b, "top1": t,
                           "p50_ms": {"host": p}} for n, f, b, t, p in artifacts]}  # fmt: skip


def test_pareto_front_and_best_variant_per_gate_budget():
    gate = {"max_accuracy_drop": 1.0, "max_bytes": 5000, "latency_statistic": "p50"}
    rows = [
        _row("a", [("torch-fp32", "torch", 9000, 0.95, None), ("onnx-fp32", "onnx", 9000, 0.95, 0.02)], gate=gate),
        _row("b", [("onnx-int8", "onnx", 3000, 0.93, 0.03)]),  # smaller: on the front, outside the accuracy budget
        _row("c", [("onnx-int8", "onnx", 4000, 0.945, 0.04)]),  # within both budgets
        _row("d", [("onnx-int8", "onnx", 4000, 0.94, 0.05)]),  # beaten by c on everything
        _row("e", [], status="failed"),
    ]
    candidates = points(rows)
    assert [p["variant"] for p in candidates] == ["a", "b", "c", "d"]  # torch left out, failed variant left out
    assert sorted(p["variant"] for p in pareto_front(candidates)) == ["a", "b", "c"]
    best = best_per_budget(candidates, gate)
    assert {k: v["variant"] for k, v in best.items()} == {"max_accuracy_drop 1.0": "a", "max_bytes 5000": "c",
                                                            "all budgets": "c"}  # fmt: skip
    summary = sweep_summary(rows)
    assert summary["counts"] == {"ok": 4, "failed": 1, "cancelled": 0} and summary["best_per_budget"] == best
    assert best_per_budget(candidates, {"max_latency_ms": 0.001}) == {"max_latency_ms 0.001": None}


def test_sweep_html_is_one_self_contained_page():
    gate = {"max_accuracy_drop": 1.0}
    html = render_sweep_html(sweep_summary([_row("a", [("onnx-fp32", "onnx", 9000, 0.95, 0.02)], gate=gate),
                                            _row("e", [], status="failed")]))  # fmt: skip
    assert html.count("data:image/svg+xml;base64,") == 2  # accuracy vs latency, accuracy vs size
    assert "failed: boom" in html and "max_accuracy_drop 1.0" in html and "127.0.0.1" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script" not in html
