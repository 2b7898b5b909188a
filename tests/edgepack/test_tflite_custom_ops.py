"""A .tflite file with a custom op (one TensorFlow has no TFLite builtin for, written with allow_custom_ops): it is
described from its flatbuffer, custom ops named, and running it where the runtime lacks the op says which op."""

from __future__ import annotations

import json

import pytest
from edgepack.converters.runtime import TFLiteSession, describe_tflite

from edgepack.core.errors import ModelFileError
from tests.edgepack.test_cli import edgepack

CUSTOM_OP = "BesselI0e"  # tf.math.special.bessel_i0e: no TFLite builtin, so the converter writes a custom op


@pytest.fixture(scope="module")
def custom_op_file(tmp_path_factory):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="x")])
    def model(x):
        return {"scaled": tf.math.special.bessel_i0e(tf.nn.relu(x))}

    module = tf.Module()
    module.model = model  # Converting with the owning module keeps "scaled" as the signature's output key.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], module)
    converter.allow_custom_ops = True
    path = tmp_path_factory.mktemp("custom") / "custom.tflite"
    path.write_bytes(converter.convert())
    return path


def test_a_file_with_a_custom_op_is_described_without_an_interpreter(custom_op_file):
    description = describe_tflite(custom_op_file)
    assert description.custom_ops == [CUSTOM_OP] and description.op_counts == {CUSTOM_OP: 1, "RELU": 1}
    assert [(s.name, s.shape, s.dtype) for s in description.inputs] == [("x", [1, 8], "float32")]
    assert [s.name for s in description.outputs] == ["scaled"] and description.precision == "fp32"


def test_running_it_without_the_op_names_the_op(custom_op_file):
    with pytest.raises(ModelFileError, match=f"custom op '{CUSTOM_OP}', which the installed LiteRT does not"):
        TFLiteSession(custom_op_file)


def test_edgepack_inspect_lists_it_and_bench_names_the_missing_op(custom_op_file):
    inspected = edgepack("inspect", str(custom_op_file), "--json")
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    assert json.loads(inspected.stdout)["custom_ops"] == [CUSTOM_OP]
    table = edgepack("inspect", str(custom_op_file))
    assert f"{CUSTOM_OP} (custom)" in table.stdout
    benched = edgepack("bench", str(custom_op_file))
    assert benched.returncode != 0
    assert f"custom op '{CUSTOM_OP}', which this runtime does not register" in benched.stderr
