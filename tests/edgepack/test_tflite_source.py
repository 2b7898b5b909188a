"""A .tflite as the model source: described, measured and benched as it is, never re-converted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgepack.calibration.sources import digits_split

import edgepack
from edgepack.convert_file import convert_file
from edgepack.core.errors import RecipeError, UserError
from edgepack.recipe import parse_recipe
from tests import models
from tests.edgepack.helpers import FAST_BENCH, image_recipe


def foreign_int8_mlp(weights_path, out_path):
    """The digits MLP rebuilt in TensorFlow and quantized by TF's own converter, int8 in and out: a file edgepack
    did not write (no metadata, NHWC input, quantized I/O)."""
    import tensorflow as tf

    state = {k: v.numpy() for k, v in torch.load(weights_path, weights_only=True).items()}
    w1, b1, w2, b2 = state["1.weight"].T, state["1.bias"], state["3.weight"].T, state["3.bias"]

    class Mlp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32, name="image")])
        def __call__(self, image):  # with one channel, NHWC and NCHW flatten to the same order
            hidden = tf.nn.relu(tf.matmul(tf.reshape(image, [1, 64]), w1) + b1)
            return {"logits": tf.matmul(hidden, w2) + b2}

    images = digits_split("train")[0].transpose(0, 2, 3, 1)
    module = Mlp()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([images[i : i + 1]] for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    out_path.write_bytes(converter.convert())
    return out_path


def test_foreign_int8_tflite_is_measured_with_quantized_io(tmp_path, trained_weights):
    source = foreign_int8_mlp(trained_weights("mlp"), tmp_path / "mlp_int8.tflite")
    images, labels = digits_split("test")
    np.savez(tmp_path / "test_nhwc.npz", image=images.transpose(0, 2, 3, 1), labels=labels)
    recipe = parse_recipe({
        "name": "foreign", "bench": FAST_BENCH, "data": {"source": "npz", "path": str(tmp_path / "test_nhwc.npz")},
        "model": {"path": str(source), "inputs": [{"name": "image", "shape": [1, 8, 8, 1]}]},
    })  # fmt: skip
    assert recipe.stages == []
    results = edgepack.pack(recipe, out=tmp_path / "run", quiet=True).results
    [root] = results["artifacts"]
    assert (root["name"], root["format"], root["precision"]) == ("tflite-int8", "tflite", "int8")
    assert root["details"]["written_by_edgepack"] is False
    assert root["inputs"][0]["dtype"] == "int8" and root["inputs"][0]["quantization"]["scale"][0] > 0
    assert root["op_counts"]["FULLY_CONNECTED"] == 2 and root["bench"][0]["runtime"] == "ai_edge_litert"
    mlp = models.mlp()
    mlp.load_state_dict(torch.load(trained_weights("mlp"), weights_only=True))
    torch_top1 = float((mlp.eval()(torch.from_numpy(images)).argmax(1).numpy() == labels).mean())
    assert abs(root["accuracy"]["top1"] - torch_top1) <= 0.02  # int8 in LiteRT, fed through its own scales


def test_edgepack_tflite_as_source_is_fed_in_onnx_layout(tmp_path, trained_weights):
    first = edgepack.pack(parse_recipe(image_recipe("conv_net", trained_weights("conv_net"))), out=tmp_path / "a",
                          quiet=True)  # fmt: skip
    tflite = first.run_dir / first.artifacts[2]["path"]
    model = {"path": str(tflite), "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}]}
    recipe = parse_recipe({"name": "again", "bench": None, "data": {"source": "digits"}, "model": model})
    [root] = edgepack.pack(recipe, out=tmp_path / "b", quiet=True).results["artifacts"]
    assert root["details"]["written_by_edgepack"] is True and root["inputs"][0]["perm_from_onnx"] == [0, 2, 3, 1]
    assert root["accuracy"]["top1"] == first.artifacts[2]["accuracy"]["top1"]


def test_tflite_source_refuses_stages_and_conversion(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"placeholder")
    recipe = {"model": {"path": str(path), "inputs": [{"name": "x", "shape": [1, 4]}]}, "stages": [{"stage": "export"}]}
    with pytest.raises(RecipeError, match=r"m\.tflite is a \.tflite file: .* remove 'stages'"):
        parse_recipe(recipe)
    with pytest.raises(UserError, match="is already TFLite"):
        convert_file(path, to="onnx", out=tmp_path / "m.onnx", input_shapes=[])
