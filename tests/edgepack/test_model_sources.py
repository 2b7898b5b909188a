"""Every model source the recipe accepts goes through the whole spine: TorchScript, torch.export .pt2, ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import edgepack
from edgepack.recipe import parse_recipe
from tests import models
from tests.edgepack.helpers import artifact


def trained_conv_net(weights) -> torch.nn.Module:
    model = models.conv_net()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def write_source(kind: str, model: torch.nn.Module, folder) -> str:
    example = (torch.zeros(1, 1, 8, 8),)
    if kind == "torchscript":
        path = folder / "conv_net.ts"
        torch.jit.trace(model, example).save(str(path))
    elif kind == "torch_export":
        path = folder / "conv_net.pt2"
        torch.export.save(torch.export.export(model, example), str(path))
    else:  # a foreign ONNX file: legacy exporter, opset 13, dynamic batch
        path = folder / "conv_net.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dynamic_batch = {"image": {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=13, input_names=["image"],
                              output_names=["logits"], dynamic_axes=dynamic_batch)  # fmt: skip
    return str(path)


@pytest.mark.parametrize("kind", ["torchscript", "torch_export", "onnx"])
def test_each_source_format_packs_to_verified_onnx_and_tflite(kind, tmp_path, trained_weights):
    source = write_source(kind, trained_conv_net(trained_weights("conv_net")), tmp_path)
    recipe = parse_recipe({
        "name": f"conv_{kind}", "bench": None, "data": {"source": "digits"},
        "model": {"path": source, "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}], "output_names": ["logits"]},
    })  # fmt: skip
    assert recipe.model.format == kind
    results = edgepack.pack(recipe, out=tmp_path / "run", quiet=True).results  # the public API
    names = [a["name"] for a in results["artifacts"]]
    assert names == (["onnx-fp32", "tflite-fp32"] if kind == "onnx" else ["torch-fp32", "onnx-fp32", "tflite-fp32"])
    reference_top1 = results["artifacts"][0]["accuracy"]["top1"]
    assert reference_top1 > 0.85
    tflite = artifact(results, "tflite-fp32")
    assert tflite["verification"]["passed"] and abs(tflite["accuracy"]["top1"] - reference_top1) <= 0.01
    assert tflite["inputs"][0]["shape"] == [1, 8, 8, 1]  # a dynamic ONNX batch is fixed from the recipe
    assert results["inputs"]["files"][source] == results["inputs"]["model_sha256"] or kind == "torch"


def test_onnx_source_is_copied_never_modified(tmp_path, trained_weights):
    source = write_source("onnx", trained_conv_net(trained_weights("conv_net")), tmp_path)
    before = Path(source).read_bytes()
    recipe = parse_recipe({"name": "copy", "bench": None, "model": {
        "path": source, "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}]}})  # fmt: skip
    result = edgepack.pack(recipe, out=tmp_path / "run", quiet=True)
    assert Path(source).read_bytes() == before
    assert result.artifacts[0]["path"] == "artifacts/copy.source.onnx"


def test_exported_onnx_carries_no_build_machine_paths(tmp_path, trained_weights):
    from tests.edgepack.helpers import image_recipe

    recipe = parse_recipe(image_recipe("conv_net", trained_weights("conv_net")) | {"bench": None, "data": None})
    result = edgepack.pack(recipe, out=tmp_path / "run", quiet=True)
    data = (result.run_dir / result.artifacts[1]["path"]).read_bytes()
    assert b"site-packages" not in data and str(tmp_path).encode() not in data
    assert b"pkg.torch.onnx.class_hierarchy" in data  # the path-free module hierarchy is kept
