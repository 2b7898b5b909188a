"""edgepack sweep on a local Ray instance (num_cpus=2): every variant an ordinary pack run, a failed variant recorded
without stopping the others, a re-run skipping what is done, and device resources that keep two variants off one
device at once. The two-node cluster is in test_sweep_cluster.py (marker ray_cluster)."""

from __future__ import annotations

import json

import pytest

import edgepack
from edgepack.sweeps import runner
from tests.edgepack.sweep_helpers import SCALES, hashes, packed_alone, sweep_inputs

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a local Ray, four pack runs and a re-run: about a minute on 2 busy cores

DEVICES = {"w1.0.pt": "ssh://pi@board-a", "w0.7.pt": "ssh://pi@board-a", "w0.4.pt": "ssh://pi@board-b",
           "broken.pt": "ssh://pi@board-b"}  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory, trained_weights, request):
    """The sweep run once, each variant also holding a fake device's resource (two variants per device), as a
    variant whose recipe benchmarks on that ssh target would; the benches themselves run on the host."""
    folder = tmp_path_factory.mktemp("sweep")
    recipe, grid = sweep_inputs(folder, trained_weights("conv_net"))
    patch = pytest.MonkeyPatch()
    patch.setattr(runner, "resources_for", lambda v: runner.device_resources([DEVICES[v.recipe.model.weights.name]]))
    request.addfinalizer(patch.undo)
    result = edgepack.sweep(recipe, [grid], out=folder / "out", num_cpus=2, quiet=True)
    return folder, recipe, grid, result


def test_every_variant_is_recorded_and_the_broken_one_does_not_stop_the_rest(swept):
    folder, _, _, result = swept
    rows = {row["grid"]["model.weights"].rsplit("/", 1)[-1]: row for row in result.variants}
    assert list(rows) == [f"w{s}.pt" for s in SCALES] + ["broken.pt"]
    assert [rows[f"w{s}.pt"]["status"] for s in SCALES] == ["ok"] * 3
    broken = rows["broken.pt"]
    assert broken["status"] == "failed" and "broken.pt" in broken["error"] and "\n" not in broken["error"]
    assert result.summary["counts"] == {"ok": 3, "failed": 1, "cancelled": 0}
    assert json.loads((folder / "out" / "sweep.json").read_text()) == result.summary
    assert (folder / "out" / "sweep.html").read_text().count("data:image/svg+xml") == 2
    for row in rows.values():
        assert row["node_id"] and row["started"] <= row["finished"]
    for scale in SCALES:  # an ordinary run folder, and its benchmarks' windows recorded
        row = rows[f"w{scale}.pt"]
        run = folder / "out" / row["run_dir"]
        assert (run / "results.json").is_file() and (run / "report.html").is_file() and (run / ".cache").is_dir()
        assert row["bench_started"] <= row["bench_finished"] and {b["target"] for b in row["benches"]} == {"host"}
    assert len({json.dumps(hashes(rows[f"w{s}.pt"]["artifacts"])) for s in SCALES}) == 3
    assert result.summary["best_per_budget"]["all budgets"]["variant"] in {r["name"] for r in rows.values()}


def test_a_variant_swept_has_the_artifacts_of_the_same_variant_packed_alone(swept):
    folder, recipe, grid, result = swept
    override = "model.weights=" + grid.split("=", 1)[1].split(",")[1]
    row = next(r for r in result.variants if r["grid"]["model.weights"] == override.split("=", 1)[1])
    assert hashes(row["artifacts"]) == packed_alone(recipe, override, folder / "alone")


def test_no_two_variants_run_on_one_device_at_once(swept):
    """The device's Ray resource (capacity 1) is held for the whole variant: on each fake device, one variant's
    window (and so its benchmarks') ends before the next one's starts."""
    _, _, _, result = swept
    for device in set(DEVICES.values()):
        mine = sorted((r for r in result.variants if DEVICES[r["grid"]["model.weights"].rsplit("/", 1)[-1]] == device),
                      key=lambda r: r["started"])  # fmt: skip
        assert len(mine) == 2 and mine[0]["finished"] <= mine[1]["started"]
        benched = [r for r in mine if r["bench_started"] is not None]
        assert all(a["bench_finished"] <= b["bench_started"] for a, b in zip(benched, benched[1:], strict=False))


def test_a_rerun_skips_finished_variants_and_retries_the_failed_one(swept):
    folder, recipe, grid, first = swept
    results_files = sorted((folder / "out" / "variants").glob("*/results.json"))
    before = {path: path.stat().st_mtime_ns for path in results_files}
    again = edgepack.sweep(recipe, [grid], out=folder / "out", num_cpus=2, quiet=True)
    assert [r["skipped"] for r in again.variants] == [True, True, True, False]
    assert [r["status"] for r in again.variants] == ["ok", "ok", "ok", "failed"]
    assert {path: path.stat().st_mtime_ns for path in results_files} == before  # nothing of them was run again
    assert [hashes(r["artifacts"]) for r in again.variants[:3]] == [hashes(r["artifacts"]) for r in first.variants[:3]]
