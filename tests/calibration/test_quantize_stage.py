"""The quantize stage end to end on the digits conv net: one calibration, four integer files, every parameter
read back from both formats, accuracy measured in each runtime, ONNX and TFLite outputs in agreement."""

from __future__ import annotations

import numpy as np
import pytest

import edgepack
from edgepack.recipe import parse_recipe
from tests.edgepack.helpers import artifact, image_recipe

QUANTIZE_BOTH = [{"stage": "export", "exporter": "legacy"}, {"stage": "quantize"},
                 {"stage": "quantize", "precision": "int16x8"}]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_weights):
    recipe = image_recipe("digits_example", trained_weights("digits_example"), stages=QUANTIZE_BOTH)
    recipe["verify"] = {"samples": 128}
    return edgepack.pack(parse_recipe(recipe), out=tmp_path_factory.mktemp("quantize") / "run", quiet=True)


def tflite_parameters(path) -> tuple[set, list]:
    """(scale, zero point) of every per-tensor integer activation, and the scale vectors of per-channel weights."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    activations, weights = set(), []
    for detail in interpreter.get_tensor_details():
        params = detail["quantization_parameters"]
        if detail["dtype"] not in (np.int8, np.int16) or len(params["scales"]) == 0:
            continue
        if len(params["scales"]) == 1:
            activations.add((np.float32(params["scales"][0]), int(params["zero_points"][0])))
        else:
            weights.append(params["scales"].astype(np.float32))
    return activations, weights


def test_four_integer_artifacts_from_one_calibration(run):
    names = [a["name"] for a in run.artifacts]
    assert names == ["torch-fp32", "onnx-fp32", "onnx-int8", "tflite-int8", "onnx-int16x8", "tflite-int16x8"]
    for name in ("tflite-int8", "tflite-int16x8"):
        assert artifact(run.results, name)["details"]["same_calibration_as"] == name.replace("tflite", "onnx")


@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_tflite_holds_exactly_edgepacks_parameters(run, precision):
    onnx_a, tflite_a = artifact(run.results, f"onnx-{precision}"), artifact(run.results, f"tflite-{precision}")
    ours = {(np.float32(p["scale"][0]), p["zero_point"][0]) for p in onnx_a["details"]["activations"].values()}
    activations, weight_scales = tflite_parameters(run.run_dir / tflite_a["path"])
    assert activations == ours  # every TFLite activation grid is one of ours, and each of ours is in the file
    for weight in onnx_a["details"]["weights"].values():
        if weight["axis"] is not None and len(weight["scale"]) > 1:
            expected = np.float32(weight["scale"])
            assert any(s.shape == expected.shape and np.allclose(s, expected, rtol=1e-6) for s in weight_scales)


@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_integer_accuracy_measured_in_each_runtime_is_within_a_point_of_float(run, precision):
    float_top1 = artifact(run.results, "torch-fp32")["accuracy"]["top1"]
    for fmt in ("onnx", "tflite"):
        accuracy = artifact(run.results, f"{fmt}-{precision}")["accuracy"]
        assert abs(accuracy["top1"] - float_top1) <= 0.01 and accuracy["samples"] == 360


def test_onnx_and_tflite_int8_agree_within_one_output_step(run):
    agreement = artifact(run.results, "tflite-int8")["details"]["agreement_with_onnx"]["logits"]
    assert agreement["within_one_step"] >= 0.99 and agreement["samples"] == 128
    sixteen = artifact(run.results, "tflite-int16x8")["details"]["agreement_with_onnx"]["logits"]
    assert sixteen["output_step"] < agreement["output_step"] / 100  # 16-bit steps are ~256x finer
    # Where the files part, layer by layer (calibration/agreement.py): nowhere on this net, in int8.
    layers = agreement["layers"]
    assert layers["layers_compared"] >= 4 and layers["samples"] == 16
    assert layers["first_divergence"] is None and layers["layers_identical"] == layers["layers_compared"]
    assert sixteen["layers"]["layers_compared"] >= 4


def test_int8_tflite_is_full_integer_with_float_io(run):
    tflite_a = artifact(run.results, "tflite-int8")
    ops = tflite_a["op_counts"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1 and ops["DEPTHWISE_CONV_2D"] == 1
    assert tflite_a["inputs"][0]["dtype"] == "float32" and tflite_a["details"]["transposes"] == 0
    assert tflite_a["details"]["min_runtime_version"]  # the converter's own entry, as for float files (manifest)


def test_integer_io_feeds_the_model_through_its_own_scales(tmp_path, trained_weights):
    stages = [
        {"stage": "export", "exporter": "legacy"},
        {"stage": "quantize", "formats": ["tflite"], "integer_io": True},
    ]
    recipe = image_recipe("conv_net", trained_weights("conv_net"), stages=stages) | {"bench": None}
    results = edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True).results
    assert [a["name"] for a in results["artifacts"]] == ["torch-fp32", "onnx-fp32", "tflite-int8"]
    tflite_a = artifact(results, "tflite-int8")
    image = tflite_a["inputs"][0]
    assert image["dtype"] == "int8" and image["quantization"]["scale"] == [pytest.approx(1 / 255)]  # digits in [0, 1]
    assert abs(tflite_a["accuracy"]["top1"] - artifact(results, "torch-fp32")["accuracy"]["top1"]) <= 0.01
    assert not list((tmp_path / "run" / "artifacts").glob("*.int8.onnx"))  # formats: [tflite] leaves no ONNX file


def test_quantize_without_calibration_data_is_refused(tmp_path, trained_weights):
    from edgepack.core.errors import DataError

    recipe = image_recipe("mlp", trained_weights("mlp"), stages=[{"stage": "export"}, {"stage": "quantize"}])
    recipe |= {"data": None, "bench": None}
    with pytest.raises(DataError, match="needs 'calibration_data'"):
        edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)


def test_int16x8_tflite_of_an_op_without_16_bit_kernels_is_refused_by_name(tmp_path, trained_weights):
    from edgepack.core.errors import UnsupportedOperatorError

    stages = [{"stage": "export", "exporter": "legacy"}, {"stage": "quantize", "precision": "int16x8"}]
    recipe = image_recipe("depthwise_net", trained_weights("depthwise_net"), stages=stages) | {"bench": None}
    with pytest.raises(
        UnsupportedOperatorError, match="HardSwish.*HARD_SWISH has no 16-bit kernel.*formats: \\[onnx\\]"
    ):
        edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    recipe["stages"][1]["formats"] = ["onnx"]  # the ONNX int16x8 file alone is fine
    results = edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True).results
    assert [a["name"] for a in results["artifacts"]][-1] == "onnx-int16x8"


def test_the_default_method_auto_records_each_tensors_choice_in_results_and_reports(run):
    for precision in ("int8", "int16x8"):
        details = artifact(run.results, f"onnx-{precision}")["details"]
        record = details["range_methods"]
        assert details["scheme"]["method"] == "auto"
        assert set(record["tensors"]) == set(details["calibrated_ranges"])  # every calibrated tensor chose
        assert sum(record["counts"].values()) == len(record["tensors"])
        assert set(record["counts"]) == {"minmax", "percentile", "mse", "entropy"}
        assert record["scored_on"].startswith("128 held-out calibration samples")
    markdown = (run.run_dir / "report.md").read_text()
    assert "## Calibration ranges" in markdown and "| tensor | method |" in markdown
    counts = artifact(run.results, "onnx-int8")["details"]["range_methods"]["counts"]
    assert "**onnx-int8** range method per activation (method auto, 128 held-out" in markdown
    assert ", ".join(f"{m} {c}" for m, c in counts.items()) in markdown
    assert "<h2>Calibration ranges</h2>" in (run.run_dir / "report.html").read_text()


@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_default_bias_correction_stays_off_after_gptq_and_says_why_in_results_and_reports(run, precision):
    details = artifact(run.results, f"onnx-{precision}")["details"]
    assert details["scheme"]["bias_correction"] == "auto" and "bias_correction" not in details
    assert details["bias_correction_choice"] == {"applied": False, "why": "the weights were rounded by gptq, which "
                                                 "minimises each layer's output error, mean included"}  # fmt: skip
    line = "bias correction off: the weights were rounded by gptq"
    assert line in (run.run_dir / "report.md").read_text()
    assert line in (run.run_dir / "report.html").read_text()


@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_default_weight_rounding_is_gptq_and_each_layers_error_is_recorded(run, precision):
    details = artifact(run.results, f"onnx-{precision}")["details"]
    assert details["scheme"]["weight_rounding"] == "gptq"
    layers = details["gptq"]["layers"]
    assert len(layers) == len(details["weights"]) == 4  # every int8 weight: conv, depthwise, pointwise, Gemm
    assert all(layer["error_gptq"] <= layer["error_nearest"] for layer in layers)
    assert sum(layer["error_gptq"] < 0.9 * layer["error_nearest"] for layer in layers) >= len(layers) // 2


def test_bias_correction_auto_with_nearest_rounding_is_measured_on_held_out_samples_in_the_stage(
    tmp_path, trained_weights
):
    stages = [{"stage": "export", "exporter": "legacy"},
              {"stage": "quantize", "weight_rounding": "nearest", "formats": ["onnx"]}]  # fmt: skip
    recipe = image_recipe("digits_example", trained_weights("digits_example"), stages=stages) | {"bench": None}
    results = edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True).results
    details = artifact(results, "onnx-int8")["details"]
    choice = details["bias_correction_choice"]
    assert choice["measured_on"] == "32 held-out calibration samples, softmax KL to float"  # a classifier's
    assert choice["applied"] == (choice["held_out_error"]["with"] < choice["held_out_error"]["without"])
    assert ("bias_correction" in details) == choice["applied"]


@pytest.mark.parametrize(("options", "fitted", "held_out"), [
    ({"method": "minmax"}, 60, 0),  # a method the user set: every sample (gptq leaves bias correction nothing to do)
    ({}, 48, 12),  # method auto holds out 20% of a set this small
    ({"method": "minmax", "weight_rounding": "nearest"}, 48, 12),  # bias correction auto decides on held-out ones
])  # fmt: skip
def test_calibration_samples_are_held_out_only_for_what_decides_on_them(tmp_path, trained_weights, options, fitted,
                                                                        held_out):  # fmt: skip
    from edgepack.calibration.sources import load_digits_dataset

    np.savez(tmp_path / "calibration.npz", image=load_digits_dataset("image", "train").head(60).inputs["image"])
    stages = [{"stage": "export", "exporter": "legacy"},
              {"stage": "quantize", "formats": ["onnx"], "calibration_data": str(tmp_path / "calibration.npz"),
               **options}]  # fmt: skip
    recipe = image_recipe("digits_example", trained_weights("digits_example"), stages=stages) | {"bench": None}
    results = edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True).results
    samples = artifact(results, "onnx-int8")["details"]["calibration_samples"]
    assert samples == {"fitted": fitted, "held_out": held_out}
