"""Inputs that are not batch-first images (issue 15): a voice-activity detector's [2, batch, 128] state (batch on
axis 1) and scalar int64 sample rate. The recipe and --input-shape state them exactly (a scalar is [], '@1' or
batch_axis: 1 names the batch axis), data files stack samples along the batch axis moved first, and a value from a
.npy file replaces random data where that is meaningless: sr = 0 would divide by zero."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edgepack.convert_file import convert_file, parse_batch_axes, parse_input_shapes, parse_input_values
from edgepack.core.errors import UserError
from edgepack.recipe import InputSpec, parse_recipe
from edgepack.running.pipeline import pack
from tests.edgepack.foreign_models import SAMPLE_RATE, export_vad, vad_feeds
from tests.edgepack.test_cli import edgepack

STATE_SHAPE = ["state=2x1x128@1"]


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    """(the exported model, its sample rate as a .npy, calibration samples as a .npz)."""
    folder = tmp_path_factory.mktemp("vad")
    np.save(folder / "sr.npy", np.array(SAMPLE_RATE, np.int64))
    np.savez(folder / "calib.npz", **vad_feeds(16, seed=1))
    return export_vad(folder / "vad.onnx"), folder / "sr.npy", folder / "calib.npz"


def test_a_scalar_and_a_batch_on_axis_1_are_legal_shapes():
    scalar = InputSpec(name="sr", shape=[], dtype="int64")
    state = InputSpec(name="state", shape=[2, 1, 128], batch_axis=1)
    assert scalar.batch_axis is None and scalar.sample_shape == [1]
    assert state.sample_shape == [1, 2, 128] and InputSpec(name="x", shape=[1, 3]).sample_shape == [1, 3]
    with pytest.raises(ValidationError, match="batch_axis 3 of input 'state' is not an axis of its shape"):
        InputSpec(name="state", shape=[2, 1, 128], batch_axis=3)


def test_float_tflite_is_verified_with_the_given_sample_rate(tmp_path, vad):
    model, sample_rate, _ = vad
    result = convert_file(model, to="tflite", out=tmp_path / "vad.tflite", input_shapes=STATE_SHAPE,
                          input_values={"sr": sample_rate})  # fmt: skip
    assert result["max_abs_error"] <= result["tolerance"] and result["cosine_similarity"] > 0.9999, result


@pytest.mark.parametrize("to", ["onnx", "tflite"])
def test_int8_calibrates_on_samples_batched_on_axis_1(tmp_path, vad, to):
    model, _, calibration = vad
    result = convert_file(model, to=to, out=tmp_path / f"vad.{to}", input_shapes=STATE_SHAPE, precision="int8",
                          calib=calibration)  # fmt: skip
    assert result["precision"] == "int8" and result["cosine_similarity"] >= 0.99, result


def vad_recipe(model: Path, sample_rate: Path) -> dict:
    """Convert to float TFLite and bench both formats, each input stated exactly (the sample rate from a file)."""
    inputs = [
        {"name": "audio", "shape": [1, 512]},
        {"name": "state", "shape": [2, 1, 128], "batch_axis": 1},
        {"name": "sr", "shape": [], "dtype": "int64", "value": str(sample_rate)},
    ]
    return {"name": "vad", "model": {"path": str(model), "inputs": inputs, "output_names": ["speech", "new_state"]},
            "task": "other", "stages": [{"stage": "convert", "to": ["tflite"]}], "robustness": None,
            "bench": {"runs": 2, "warmup": 0, "min_seconds": 0}}  # fmt: skip


def test_pack_verifies_and_benches_both_formats_with_the_recipe_values(tmp_path, vad):
    model, sample_rate, _ = vad
    recipe = vad_recipe(model, sample_rate)
    result = pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    artifacts = {a["format"]: a for a in result.artifacts}
    for artifact in artifacts.values():
        if artifact["format"] == "onnx":
            continue  # the source: the reference itself
        assert all(o["max_abs_error"] <= o["tolerance"] for o in artifact["verification"]["outputs"]), artifact
    for fmt in ("onnx", "tflite"):
        inputs = artifacts[fmt]["bench"][0]["inputs"]
        fed = {i["name"].removeprefix("serving_default_").split(":")[0]: i for i in inputs}
        assert fed["sr"]["shape"] == [] and fed["state"]["shape"] == [2, 1, 128], fed


def test_bench_feeds_an_input_from_a_npy_file(tmp_path, vad):
    model, sample_rate, _ = vad
    run = edgepack("bench", str(model), "--runs", "2", "--warmup", "0", "--min-seconds", "0", "--json",
                   "--input", f"sr={sample_rate}")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(run.stdout)
    assert {i["name"]: i["shape"] for i in record["inputs"]} == {"audio": [1, 512], "state": [2, 1, 128], "sr": []}
    from edgepack.device_bench.runner import given_or_random

    value = given_or_random(["sr"], [], np.int64, np.random.default_rng(0), {"sr": np.load(sample_rate)})
    assert value.dtype == np.int64 and int(value) == SAMPLE_RATE  # not the zeros random data gives an int64


def test_a_dynamic_batch_on_axis_1_is_stated_with_its_axis(tmp_path, vad):
    _, sample_rate, _ = vad
    model = export_vad(tmp_path / "vad_dynamic.onnx", dynamic_batch=True)
    with pytest.raises(UserError, match=r"--input-shape state=2x1x128 \(with @AXIS after it"):
        convert_file(model, to="tflite", out=tmp_path / "vad.tflite", input_shapes=[])
    result = convert_file(model, to="tflite", out=tmp_path / "vad.tflite", input_shapes=STATE_SHAPE,
                          input_values={"sr": sample_rate})  # fmt: skip
    assert result["max_abs_error"] <= result["tolerance"], result


def test_command_line_shapes_axes_and_values_parse():
    items = ["state=2x1x128@1", "sr=", "audio=1x512"]
    assert parse_input_shapes(items) == {"state": [2, 1, 128], "sr": [], "audio": [1, 512]}
    assert parse_batch_axes(items) == {"state": 1}
    assert parse_input_values(["sr=rate.npy"]) == {"sr": Path("rate.npy")}
    with pytest.raises(UserError, match=r"--input 'sr': expected NAME=FILE.npy"):
        parse_input_values(["sr"])
    with pytest.raises(UserError, match=r"--input-shape 'state=2x1x128@b'"):
        parse_input_shapes(["state=2x1x128@b"])


def test_an_input_value_file_changed_in_place_is_measured_again(tmp_path, vad):
    """The cache is keyed by content: a sample rate rewritten under the same path invalidates every step that fed it
    (convert's verification, the bench), while the source file's own steps stay cached."""
    model, _, _ = vad
    rate = tmp_path / "sr.npy"
    np.save(rate, np.array(SAMPLE_RATE, np.int64))
    recipe = vad_recipe(model, rate)
    pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    np.save(rate, np.array(SAMPLE_RATE // 2, np.int64))
    again = pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    cached = {step["name"]: step["cached"] for step in again.results["steps"]}
    bench_steps = [name for name in cached if name.startswith("bench ")]
    assert bench_steps and not any(cached[name] for name in bench_steps), cached
    assert not cached["convert"], cached
