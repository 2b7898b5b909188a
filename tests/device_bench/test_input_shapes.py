"""Dynamic dimensions are benchmarked at the sizes the user states, never silently at 1: a detector timed on a 1x1
image measures nothing. A dynamic batch alone still runs at 1 (the record says what ran)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from edgepack.device_bench import BenchOptions, bench
from onnx import TensorProto, helper, numpy_helper

from edgepack.core.errors import BenchError
from edgepack.recipe import parse_recipe
from edgepack.running.pipeline import pack
from tests.device_bench.helpers import conv_relu_recipe, edgepack_cli

QUICK = {"runs": 3, "warmup": 0, "min_seconds": 0.0}


def write_conv_onnx(path, shape: list) -> str:
    """A 3x3 conv + relu whose input has ``shape`` (strings are dynamic dimensions)."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 4, *shape[2:]])
    graph = helper.make_graph(nodes, "conv", [image], [y], [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return write_conv_onnx(tmp_path_factory.mktemp("dynamic") / "detector.onnx", ["batch", 3, "height", "width"])


def test_a_dynamic_spatial_dimension_without_a_size_is_an_error_naming_the_input(detector):
    with pytest.raises(BenchError) as caught:
        bench(detector, "host", BenchOptions(**QUICK))
    message = str(caught.value)
    assert "input 'image' has dynamic dimensions [batch, 3, height, width]" in message
    assert "--input-shape image=1x3x1x1" in message  # how to say it, with the fixed dimension kept


def test_the_stated_shape_is_what_runs(detector):
    record = bench(detector, "host", BenchOptions(**QUICK, input_shapes={"image": [2, 3, 48, 64]}))
    assert record["inputs"] == [{"name": "image", "shape": [2, 3, 48, 64], "dtype": "float32"}]


def test_a_shape_that_does_not_fit_or_names_no_input_is_refused(detector):
    with pytest.raises(BenchError, match=r"--input-shape image=1x4x8x8 does not fit input 'image'"):
        bench(detector, "host", BenchOptions(**QUICK, input_shapes={"image": [1, 4, 8, 8]}))
    with pytest.raises(BenchError, match=r"names \['picture'\], not inputs of the model; its inputs: \['image'\]"):
        bench(detector, "host", BenchOptions(**QUICK, input_shapes={"picture": [1, 3, 8, 8]}))


def test_a_dynamic_batch_alone_runs_at_one(tmp_path):
    model = write_conv_onnx(tmp_path / "classifier.onnx", ["batch", 3, 8, 8])
    assert bench(model, "host", BenchOptions(**QUICK))["inputs"][0]["shape"] == [1, 3, 8, 8]


def test_tflite_input_with_a_dynamic_signature(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(lambda x: tf.nn.relu(x) * 2.0, input_signature=[tf.TensorSpec([1, None, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module)
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(BenchError, match=r"has dynamic dimensions \[1, \?, 3\]"):
        bench(path, "host", BenchOptions(**QUICK))
    record = bench(path, "host", BenchOptions(**QUICK, input_shapes={"x": [1, 40, 3]}))
    assert record["inputs"][0]["shape"] == [1, 40, 3]


def test_cli_input_shape(detector):
    done = edgepack_cli("bench", str(detector), "--json", "--runs", "3", "--min-seconds", "0",
                        "--input-shape", "image=1x3x32x40")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inputs"][0]["shape"] == [1, 3, 32, 40]
    missing = edgepack_cli("bench", str(detector), "--runs", "3", "--min-seconds", "0")
    assert missing.returncode == 1 and "--input-shape image=" in missing.stderr


def test_a_pack_benches_at_the_recipes_shapes(tmp_path, detector):
    model = {"path": str(detector), "inputs": [{"name": "image", "shape": [1, 3, 24, 20]}], "output_names": ["y"]}
    recipe = conv_relu_recipe(detector, model=model, bench=QUICK | {"threads": 1})
    run = pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    shapes = {a["name"]: a["bench"][0]["inputs"][0]["shape"] for a in run.artifacts if a["bench"]}
    assert shapes == {"onnx-fp32": [1, 3, 24, 20], "tflite-fp32": [1, 24, 20, 3]}  # TFLite: NHWC, fixed at conversion
