"""The whole spine on tiny models trained on digits: files, structure in ONNX and TFLite, and numbers."""

from __future__ import annotations

import json

import onnx
import pytest
from edgepack.converters.runtime import count_tflite_ops

from edgepack.core.artifacts import sha256_file
from edgepack.running.pipeline import pack
from tests.edgepack.helpers import artifact, image_recipe, two_input_recipe

IMAGE_MODELS = ["conv_net", "mlp", "depthwise_net"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_weights):
    """Pack each tiny model once per module; {model name: PackResult}."""
    done = {}

    def get(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            if name == "two_input_net":
                recipe = two_input_recipe(trained_weights(name), out)
            else:
                recipe = image_recipe(name, trained_weights(name))
            from edgepack.recipe import parse_recipe

            done[name] = pack(parse_recipe(recipe), out=out / "run", quiet=True)
        return done[name]

    return get


@pytest.mark.parametrize("name", [*IMAGE_MODELS, "two_input_net"])
def test_every_artifact_is_written_verified_and_measured(runs, name):
    result = runs(name)
    results = result.results
    assert [a["name"] for a in results["artifacts"]] == ["torch-fp32", "onnx-fp32", "tflite-fp32"]
    for a in results["artifacts"][1:]:
        path = result.run_dir / a["path"]
        assert path.is_file() and sha256_file(path) == a["sha256"] and path.stat().st_size == a["bytes"]
        assert a["verification"]["passed"]
        for out in a["verification"]["outputs"]:
            assert out["max_abs_error"] <= out["tolerance"] == pytest.approx(1e-4 * max(out["reference_range"], 1e-3))
            assert out["cosine_similarity"] > 0.99999
        assert a["verification"]["top1_agreement"] == 1.0
        bench = a["bench"][0]
        assert bench["target"] == "host" and bench["runs"] >= 5 and bench["model_bytes"] == a["bytes"]
        assert 0 < bench["latency_ms"]["min"] <= bench["latency_ms"]["p50"] <= bench["latency_ms"]["max"]


@pytest.mark.parametrize("name", [*IMAGE_MODELS, "two_input_net"])
def test_accuracy_is_measured_in_each_runtime_and_matches_torch(runs, name):
    results = runs(name).results
    torch_top1 = artifact(results, "torch-fp32")["accuracy"]["top1"]
    assert torch_top1 > 0.85  # the tiny models really learned digits
    for name_ in ("onnx-fp32", "tflite-fp32"):
        accuracy = artifact(results, name_)["accuracy"]
        assert accuracy["samples"] == 360
        assert abs(accuracy["top1"] - torch_top1) <= 0.01
    assert artifact(results, "onnx-fp32")["accuracy"]["runtime"].startswith("onnxruntime")
    assert artifact(results, "tflite-fp32")["accuracy"]["runtime"].startswith("ai_edge_litert")


def test_conv_net_structure_in_onnx_and_tflite(runs):
    result = runs("conv_net")
    onnx_a, tflite_a = artifact(result.results, "onnx-fp32"), artifact(result.results, "tflite-fp32")
    model = onnx.load(result.run_dir / onnx_a["path"])
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    assert {"Conv", "Gemm"} <= {n.op_type for n in model.graph.node}
    assert onnx_a["inputs"][0]["shape"] == [1, 1, 8, 8] and onnx_a["inputs"][0]["layout"] == "NCHW"
    ops = count_tflite_ops(result.run_dir / tflite_a["path"])
    assert ops["CONV_2D"] == 2 and ops.get("FULLY_CONNECTED") == 1
    assert ops.get("TRANSPOSE", 0) == 0 == tflite_a["details"]["transposes"]  # NHWC inside, no layout shuffling
    image = tflite_a["inputs"][0]
    assert (image["name"], image["shape"], image["layout"], image["perm_from_onnx"]) == (
        "image",
        [1, 8, 8, 1],
        "NHWC",
        [0, 2, 3, 1],
    )
    assert tflite_a["outputs"][0]["name"] == "logits" and tflite_a["outputs"][0]["shape"] == [1, 10]


def test_depthwise_net_keeps_depthwise_and_hard_swish_ops(runs):
    result = runs("depthwise_net")
    ops = count_tflite_ops(result.run_dir / artifact(result.results, "tflite-fp32")["path"])
    assert ops["DEPTHWISE_CONV_2D"] == 1 and ops["HARD_SWISH"] == 1 and ops.get("TRANSPOSE", 0) == 0


def test_two_inputs_keep_their_names_and_layouts(runs):
    tflite_a = artifact(runs("two_input_net").results, "tflite-fp32")
    specs = {s["name"]: s for s in tflite_a["inputs"]}
    assert specs["image"]["shape"] == [1, 8, 8, 1] and specs["rows"]["shape"] == [1, 8]
    assert specs["rows"]["perm_from_onnx"] is None


def test_run_folder_holds_results_manifest_and_report(runs):
    result = runs("conv_net")
    on_disk = json.loads((result.run_dir / "results.json").read_text())
    assert on_disk["artifacts"] == result.results["artifacts"]
    assert on_disk["inputs"]["model_sha256"] and on_disk["environment"]["packages"]["torch"].startswith("2.")
    assert {s["name"] for s in on_disk["steps"]} >= {"load", "export", "convert"}
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    shipped = {a["name"]: a for a in manifest["artifacts"]}
    assert set(shipped) == {"onnx-fp32", "tflite-fp32"}
    assert shipped["tflite-fp32"]["inputs"][0]["layout"] == "NHWC"
    assert shipped["tflite-fp32"]["sha256"] == sha256_file(result.run_dir / shipped["tflite-fp32"]["file"])
    assert shipped["onnx-fp32"]["runtime"]["min_version"] == "1.14"  # opset 18
    assert manifest["preprocessing"]["scale"] == pytest.approx(1 / 16)
    report = (result.run_dir / "report.md").read_text()
    assert "| tflite-fp32 | tflite | fp32 |" in report and "## Latency on the host" in report
