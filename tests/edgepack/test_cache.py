"""A second identical run redoes nothing; a changed stage config redoes that stage and what follows."""

from __future__ import annotations

import shutil

import pytest

from edgepack.core.artifacts import sha256_file
from edgepack.recipe import parse_recipe
from edgepack.running.pipeline import pack
from tests.edgepack.helpers import image_recipe


def cached_steps(result) -> dict[str, bool]:
    return {step["name"]: step["cached"] for step in result.results["steps"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, trained_weights):
    recipe = image_recipe("mlp", trained_weights("mlp"), stages=[{"stage": "export", "exporter": "legacy"},
                                                                  {"stage": "convert"}])  # fmt: skip
    out = tmp_path_factory.mktemp("cache") / "run"
    return recipe, out, pack(parse_recipe(recipe), out=out, quiet=True)


def test_first_run_computes_every_step(first_run):
    _, _, result = first_run
    assert not any(cached_steps(result).values()) and not result.results["all_cached"]


def test_identical_second_run_redoes_nothing(first_run):
    recipe, out, first = first_run
    second = pack(parse_recipe(recipe), out=out, quiet=True)
    steps = cached_steps(second)
    assert all(cached for name, cached in steps.items() if name != "load") and second.results["all_cached"]
    assert [a["sha256"] for a in second.artifacts] == [a["sha256"] for a in first.artifacts]
    assert second.artifacts[2]["bench"] == first.artifacts[2]["bench"]  # the same record, not a new measurement


def test_changed_export_config_redoes_export_and_what_follows(first_run):
    recipe, out, first = first_run
    changed = recipe | {"stages": [{"stage": "export", "exporter": "legacy", "opset": 16}, {"stage": "convert"}]}
    result = pack(parse_recipe(changed), out=out, quiet=True)
    steps = cached_steps(result)
    assert steps["accuracy torch-fp32"] is True  # the source model did not change
    assert steps["export"] is False and steps["verify onnx-fp32"] is False and steps["bench onnx-fp32"] is False
    assert steps["convert"] is False  # its input (the ONNX file) changed
    # Keys are content hashes: a TFLite file that came out byte-identical keeps its measurements.
    same_tflite = result.artifacts[2]["sha256"] == first.artifacts[2]["sha256"]
    assert steps["bench tflite-fp32"] is same_tflite


def test_changed_bench_options_redo_only_the_benchmarks(first_run):
    recipe, out, _ = first_run
    changed = recipe | {"bench": recipe["bench"] | {"runs": 7}}
    steps = cached_steps(pack(parse_recipe(changed), out=out, quiet=True))
    assert steps["export"] and steps["convert"] and steps["verify tflite-fp32"]
    assert not steps["bench onnx-fp32"] and not steps["bench tflite-fp32"]


def test_a_damaged_artifact_is_restored_or_rebuilt_never_trusted(first_run):
    recipe, out, first = first_run
    tflite = out / first.artifacts[2]["path"]
    tflite.unlink()
    tflite.write_bytes(b"truncated")  # a new file, as an interrupted copy would leave
    result = pack(parse_recipe(recipe), out=out, quiet=True)
    assert sha256_file(tflite) == result.artifacts[2]["sha256"] == first.artifacts[2]["sha256"]
    assert result.artifacts[2]["verification"]["passed"]


def test_with_no_blob_left_a_damaged_artifact_is_rebuilt(first_run):
    recipe, out, first = first_run
    shutil.rmtree(out / ".cache" / "blobs")
    tflite = out / first.artifacts[2]["path"]
    tflite.unlink()
    tflite.write_bytes(b"truncated")
    result = pack(parse_recipe(recipe), out=out, quiet=True)
    assert cached_steps(result)["convert"] is False
    assert sha256_file(tflite) == result.artifacts[2]["sha256"]
