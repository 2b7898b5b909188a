"""A .tflite file as a model source: edgepack's own and other tools' files are described (names, layouts, op
counts, precision) so they can be benched and reported as they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgepack.converters.onnx_to_tflite import convert_onnx_to_tflite
from edgepack.converters.runtime import TFLiteSession, describe_tflite
from onnx import helper

from edgepack.core.errors import ModelFileError
from tests.converters.conftest import make_model


def keras_free_tflite(path, mode: str):
    """A conv + dense model written by TensorFlow's own converter (no edgepack metadata) in ``mode``."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    # Large enough (> 1024 elements) for the converter to quantize them in dynamic-range mode.
    filters = rng.standard_normal((3, 3, 3, 64)).astype(np.float32)
    dense = rng.standard_normal((64, 32)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, name="pixels")])
    def model(pixels):
        features = tf.nn.relu(tf.nn.conv2d(pixels, filters, 1, "SAME"))
        return {"scores": tf.linalg.matmul(tf.reduce_mean(features, axis=[1, 2]), dense)}

    module = tf.Module()
    module.model = model  # Converting with the owning module keeps "scores" as the signature's output key.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], module)
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        converter.representative_dataset = lambda: (
            [rng.standard_normal((1, 16, 16, 3)).astype(np.float32)] for _ in range(8)
        )
    path.write_bytes(converter.convert())
    return path


@pytest.mark.parametrize("mode", ["fp32", "fp16", "dynamic_int8", "int8"])
def test_other_tools_tflite_files_are_described(tmp_path, mode):
    path = keras_free_tflite(tmp_path / f"{mode}.tflite", mode)
    description = describe_tflite(path)
    assert description.precision == mode and not description.written_by_edgepack
    assert [(s.name, s.shape, s.layout) for s in description.inputs] == [("pixels", [1, 16, 16, 3], None)]
    assert [s.name for s in description.outputs] == ["scores"]
    assert description.op_counts.get("CONV_2D") == 1, description.op_counts
    session = TFLiteSession(path)  # And it runs as it is, fed in its own layout.
    out = session.run({"pixels": np.ones((1, 16, 16, 3), np.float32)})["scores"]
    assert out.shape == (1, 32) and np.isfinite(out).all()


def test_edgepack_tflite_files_keep_onnx_names_and_layouts(tmp_path):
    node = helper.make_node("Conv", ["image", "w"], ["features"], pads=[1, 1, 1, 1])
    weights = {"w": np.ones((4, 3, 3, 3), np.float32)}
    onnx.save(make_model([node], {"image": [1, 3, 8, 8]}, ["features"], weights), tmp_path / "m.onnx")
    convert_onnx_to_tflite(tmp_path / "m.onnx", tmp_path / "m.tflite")
    description = describe_tflite(tmp_path / "m.tflite")
    assert description.precision == "fp32" and description.written_by_edgepack
    assert [(s.name, s.layout, s.perm_from_onnx) for s in description.inputs] == [("image", "NHWC", [0, 2, 3, 1])]
    assert description.op_counts == {"CONV_2D": 1}


def test_missing_or_bogus_tflite_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        describe_tflite(tmp_path / "absent.tflite")
    (tmp_path / "bogus.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelFileError, match="bogus.tflite"):
        describe_tflite(tmp_path / "bogus.tflite")
