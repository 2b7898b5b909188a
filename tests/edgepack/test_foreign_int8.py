"""int8 on ONNX graphs edgepack did not write: whatever converts to float quantizes too (weights as Constant nodes,
opset 12, a Softmax whose output is reshaped), to both formats, each file verified against the float source."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgepack.converters.normalise import normalised_for_quantization
from onnx import helper

from edgepack.convert_file import convert_file
from tests.converters.conftest import make_model
from tests.converters.test_foreign_onnx import weights_as_constant_nodes
from tests.edgepack.test_cli import edgepack

RNG = np.random.default_rng(0)
CONV = {"conv2d_0.w_0": RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "conv2d_0.b_0": RNG.standard_normal(8).astype(np.float32) * 0.1,
        "fc_0.w_0": RNG.standard_normal((8, 6)).astype(np.float32) * 0.3,
        "shape": np.array([1, 8, 32], np.int64)}  # fmt: skip


def recogniser(opset: int, softmax_axis: int = -1, reshaped_softmax: bool = False) -> onnx.ModelProto:
    """A text recogniser's shape, as Paddle exports it: conv features -> a [1, T, C] sequence -> per-step class
    scores -> Softmax (named as Paddle names it). ``reshaped_softmax``: the Softmax written as onnx's opset 13
    adapter writes an opset 12 one, Flatten -> Softmax (NAME_intermediate) -> Reshape (NAME)."""
    nodes = [
        helper.make_node("Conv", ["x", "conv2d_0.w_0", "conv2d_0.b_0"], ["c"], pads=[1, 1, 1, 1], name="conv2d_0"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["seq"]),
        helper.make_node("Transpose", ["seq"], ["steps"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["steps", "fc_0.w_0"], ["logits"], name="fc_0"),
    ]
    if reshaped_softmax:
        nodes += [
            helper.make_node("Shape", ["logits"], ["logits_shape"]),
            helper.make_node("Flatten", ["logits"], ["flat"], axis=1),
            helper.make_node("Softmax", ["flat"], ["softmax_9.tmp_0_intermediate"], axis=-1, name="softmax_9"),
            helper.make_node("Reshape", ["softmax_9.tmp_0_intermediate", "logits_shape"], ["softmax_9.tmp_0"]),
        ]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["softmax_9.tmp_0"], axis=softmax_axis, name="softmax_9"))
    model = make_model(nodes, {"x": [1, 3, 4, 8]}, ["softmax_9.tmp_0"], CONV, opset=opset)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("softmax_9.tmp_0", onnx.TensorProto.FLOAT, [1, 32, 6]))
    return model


CASES = {
    "constant_weights": lambda: weights_as_constant_nodes(recogniser(17)),
    "opset12": lambda: recogniser(12, softmax_axis=2),
    "reshaped_softmax": lambda: recogniser(13, reshaped_softmax=True),
    "opset12_flattening_softmax": lambda: recogniser(12, softmax_axis=1),  # adapted to the reshaped form
}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=np.random.default_rng(1).standard_normal((16, 3, 4, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize("to", ["onnx", "tflite"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_foreign_graphs_quantize_to_both_formats(tmp_path, calibration, case, to):
    onnx.save(CASES[case](), tmp_path / "m.onnx")
    result = convert_file(tmp_path / "m.onnx", to=to, out=tmp_path / f"m.{to}", input_shapes=[], precision="int8",
                          calib=calibration)  # fmt: skip
    assert result["precision"] == "int8" and result["cosine_similarity"] >= 0.99, result


@pytest.mark.parametrize("case", sorted(CASES))
def test_foreign_graphs_convert_to_float_tflite(tmp_path, case):
    # The int8 files are held to what float does: each case converts to float too (an opset 12 Softmax flattening
    # from axis 1 is lowered as Flatten -> Softmax -> Reshape, as onnx's adapter writes it for the int8 files).
    onnx.save(CASES[case](), tmp_path / "m.onnx")
    result = convert_file(tmp_path / "m.onnx", to="tflite", out=tmp_path / "m.tflite", input_shapes=[])
    assert result["precision"] == "fp32" and result["max_abs_error"] <= result["tolerance"], result


def test_normalising_keeps_names_and_a_last_axis_softmax_one_node():
    model = weights_as_constant_nodes(recogniser(12, softmax_axis=2))
    normalised = normalised_for_quantization(model)
    assert normalised.opset_import[0].version == 13 and model.opset_import[0].version == 12  # a copy
    assert {t.name for t in normalised.graph.initializer} == set(CONV)
    assert [n.op_type for n in normalised.graph.node] == ["Conv", "Relu", "Reshape", "Transpose", "MatMul", "Softmax"]
    assert normalised.graph.node[-1].output[0] == "softmax_9.tmp_0"
    assert normalised_for_quantization(normalised) is normalised  # nothing to do: the same model


def test_edgepack_convert_int8_of_a_paddle_style_export(tmp_path, calibration):
    onnx.save(weights_as_constant_nodes(recogniser(12, softmax_axis=1)), tmp_path / "rec.onnx")
    run = edgepack("convert", str(tmp_path / "rec.onnx"), "--to", "tflite", "--precision", "int8", "--calib",
                   str(calibration), "--out", str(tmp_path / "rec.tflite"))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "int8" in run.stdout and (tmp_path / "rec.tflite").exists()
