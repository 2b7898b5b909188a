"""ONNX files edgepack did not write: older opsets, weights as Constant nodes, constant-condition Ifs, external
data, inputs already NHWC, batch-major recurrences; and a clear error for what cannot convert."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgepack.converters.onnx_to_tf.prepare import prepare_model
from edgepack.converters.onnx_to_tflite import convert_onnx_to_tflite
from edgepack.converters.runtime import OnnxSession
from onnx import helper, numpy_helper

from edgepack.core.errors import UnsupportedOperatorError
from tests.converters.arch_sequence import MiniBert, RecurrentClassifier, TinyViT
from tests.converters.arch_vision import Detector, MobileNetV3Small, ResNet18, UNet
from tests.converters.conftest import convert_and_compare, make_model, random_feeds, run_tflite, worst_error
from tests.converters.op_cases_recurrent_logic import recurrent
from tests.converters.test_architectures_sequence import BERT_INPUTS, bert_examples
from tests.converters.torch_check import calibrate_batchnorm, check_architecture, export


def image(size: int = 32) -> tuple[torch.Tensor]:
    return (torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(7)),)


OLD_OPSETS = {
    "mobilenet_v3_opset11": (lambda: calibrate_batchnorm(MobileNetV3Small(0.35, 10), [4, 3, 32, 32]), image, 11),
    "unet_opset11": (lambda: calibrate_batchnorm(UNet(), [4, 3, 32, 32]), image, 11),
    "detector_opset13": (lambda: calibrate_batchnorm(Detector(), [4, 3, 32, 32]), image, 13),
    "bert_opset11": (lambda: MiniBert(layers=1), bert_examples, 11),
    "vit_opset14": (lambda: TinyViT(layers=1), image, 14),
    "gru_opset11": (lambda: RecurrentClassifier("gru", layers=1), lambda: (torch.randn(1, 6, 20),), 11),
}
NAMES = {"bert_opset11": (BERT_INPUTS, ["hidden", "pooled"]), "gru_opset11": (["x"], ["logits"])}
NAMES.update({"detector_opset13": (["image"], ["boxes", "scores"])})


@pytest.mark.parametrize("case", sorted(OLD_OPSETS))
def test_older_opsets_convert(tmp_path, case):
    factory, examples, opset = OLD_OPSETS[case]
    torch.manual_seed(0)
    inputs, outputs = NAMES.get(case, (["image"], ["out"]))
    result = check_architecture(factory().eval(), examples(), tmp_path, inputs, outputs, opset=opset)
    result.assert_matches()
    assert next(iter(tmp_path.glob("*.onnx"))).exists()
    model = onnx.load(str(next(iter(tmp_path.glob("*.onnx")))))
    assert model.opset_import[0].version == opset


def weights_as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """How some tools store weights: Constant nodes at the top of the graph, no initializers."""
    constants = [
        helper.make_node("Constant", [], [tensor.name], value=tensor, name=f"const_{tensor.name}")
        for tensor in model.graph.initializer
    ]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def test_weights_stored_as_constant_nodes(tmp_path):
    torch.manual_seed(0)
    module = calibrate_batchnorm(ResNet18(width=0.125, classes=5), [4, 3, 32, 32])
    path = export(module, tmp_path / "resnet.onnx", image(), ["image"], ["logits"])
    model = weights_as_constant_nodes(onnx.load(str(path)))
    assert not model.graph.initializer and sum(n.op_type == "Constant" for n in model.graph.node) > 20
    onnx.save(model, tmp_path / "constants.onnx")
    result = convert_and_compare(tmp_path / "constants.onnx", tmp_path / "constants.tflite")
    assert result.max_error <= result.tolerance
    assert result.conversion.op_counts["CONV_2D"] == 20 and result.conversion.op_counts["TRANSPOSE"] == 0


def if_on_batch_size(condition_from_data: bool = False) -> onnx.ModelProto:
    """``y = relu(x) * 2 if x.shape[0] == 1 else sigmoid(x)``: constant once the batch is fixed (or, with
    ``condition_from_data``, ``if sum(x) > 0``, which no static graph can decide)."""
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(2.0), "two")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", onnx.TensorProto.FLOAT, None)],
    )
    if condition_from_data:
        test = [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["c"]),
        ]
    else:
        test = [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero_index"], ["batch"], axis=0),
            helper.make_node("Equal", ["batch", "one"], ["c"]),
        ]
    branch = helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch, name="batch_check")
    constants = {"zero_index": np.array(0, np.int64), "one": np.array(1, np.int64), "zero": np.float32(0)}
    return make_model([*test, branch], {"x": ["batch", 4, 6]}, ["y"], constants)


def test_if_with_a_condition_that_folds_is_inlined(tmp_path):
    onnx.save(if_on_batch_size(), tmp_path / "if.onnx")
    result = convert_and_compare(tmp_path / "if.onnx", tmp_path / "if.tflite")
    assert result.max_error <= result.tolerance
    assert "LOGISTIC" not in result.conversion.op_counts and result.conversion.op_counts["MUL"] == 1


def test_if_on_the_data_names_node_and_op(tmp_path):
    onnx.save(if_on_batch_size(condition_from_data=True), tmp_path / "if.onnx")
    with pytest.raises(UnsupportedOperatorError, match=r"'batch_check' \(op If\).*computed from the input data"):
        convert_onnx_to_tflite(tmp_path / "if.onnx", tmp_path / "if.tflite")


def test_external_data_is_read_from_beside_the_model(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = calibrate_batchnorm(ResNet18(width=0.125, classes=5), [4, 3, 32, 32])
    model = onnx.load(str(export(module, tmp_path / "inline.onnx", image(), ["image"], ["logits"])))
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save_model(model, folder / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    assert (folder / "m.onnx").stat().st_size < (folder / "m.weights").stat().st_size / 10
    monkeypatch.chdir(tmp_path)  # Relative to the model file, not to the working directory.
    result = convert_and_compare(folder / "m.onnx", tmp_path / "m.tflite")
    assert result.max_error <= result.tolerance


def test_large_weights_stay_out_of_the_message_shape_inference_reads(tmp_path):
    # What keeps a > 2 GB model workable: weights are held as numpy, the protobuf only carries their shapes.
    big = np.random.default_rng(0).standard_normal((512, 256, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y0"], pads=[1, 1, 1, 1])
    onnx.save(make_model([node], {"x": [1, 256, 4, 4]}, ["y0"], {"w": big}), tmp_path / "big.onnx")
    prepared = prepare_model(tmp_path / "big.onnx")
    (stub,) = [t for t in prepared.graph.initializer if t.name == "w"]
    assert stub.data_location == onnx.TensorProto.EXTERNAL and not stub.raw_data and list(stub.dims) == list(big.shape)
    assert prepared.graph.ByteSize() < 10_000 < big.nbytes
    np.testing.assert_array_equal(prepared.constants["w"], big)


def test_input_already_nhwc_is_not_transposed_again(tmp_path):
    # tf2onnx-style: the model takes NHWC and transposes to NCHW itself; that transpose must cancel out.
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y0"]),
    ]
    weights = {"w": np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)}
    onnx.save(make_model(nodes, {"x": [1, 8, 8, 3]}, ["y0"], weights), tmp_path / "nhwc.onnx")
    result = convert_and_compare(tmp_path / "nhwc.onnx", tmp_path / "nhwc.tflite")
    assert result.max_error <= result.tolerance
    assert result.conversion.inputs[0].perm_from_onnx is None and result.conversion.op_counts["TRANSPOSE"] == 0


def time_major_twin(batch_major: onnx.ModelProto) -> onnx.ModelProto:
    """The same recurrence at layout=0, between Transposes, with the batch-major model's inputs and outputs."""
    (node,) = batch_major.graph.node
    fed = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in batch_major.graph.input}
    fed = {name: shape for name, shape in fed.items() if name not in {t.name for t in batch_major.graph.initializer}}
    inner = onnx.NodeProto()
    inner.CopyFrom(node)
    inner.input[:] = [f"{n}_t" if n in fed else n for n in node.input]
    inner.output[:] = [f"{n}_t" for n in node.output]
    next(a for a in inner.attribute if a.name == "layout").i = 0
    before = [helper.make_node("Transpose", [n], [f"{n}_t"], perm=[1, 0, 2]) for n in fed]
    after = [
        helper.make_node("Transpose", [f"{n}_t"], [n], perm=[2, 0, 1, 3] if i == 0 else [1, 0, 2])
        for i, n in enumerate(node.output)
    ]
    constants = {t.name: numpy_helper.to_array(t) for t in batch_major.graph.initializer}
    return make_model([*before, inner, *after], fed, list(node.output), constants)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_batch_major_recurrence_matches_its_time_major_twin(tmp_path, op):
    # onnxruntime cannot run layout=1, so the reference is the same cell at layout=0 between two Transposes.
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    batch_major = recurrent(op, directions=2, fed_state=True, layout=1, **extra).model
    onnx.save(batch_major, tmp_path / "layout1.onnx")
    conversion = convert_onnx_to_tflite(tmp_path / "layout1.onnx", tmp_path / "layout1.tflite")
    onnx.save(time_major_twin(batch_major), tmp_path / "layout0.onnx")
    session = OnnxSession(tmp_path / "layout0.onnx")
    feeds = random_feeds(session)
    error, tolerance = worst_error(session.run(feeds), run_tflite(tmp_path / "layout1.tflite", feeds))
    assert error <= tolerance
    assert conversion.op_counts["TRANSPOSE"] == 0, conversion.op_counts


@pytest.mark.parametrize("axis", [1, 2])
def test_opset11_softmax_flattening_from_an_inner_axis(tmp_path, axis):
    # Before opset 13 a Softmax normalises over every axis from ``axis`` on (old segmentation and OCR exports).
    weights = {"w": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Softmax", ["c"], ["y"], axis=axis),
    ]
    onnx.save(make_model(nodes, {"x": [1, 3, 5, 6]}, ["y"], weights, opset=11), tmp_path / "softmax.onnx")
    result = convert_and_compare(tmp_path / "softmax.onnx", tmp_path / "softmax.tflite")
    assert result.max_error <= result.tolerance and result.conversion.op_counts["SOFTMAX"] == 1
