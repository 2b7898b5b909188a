"""Explicit Pads ('same' padding of TF-trained ports) are folded into the Conv/pool reading them before quantizing:
the float function is unchanged, and onnxruntime's fused int8 graph has no float Conv and no DQ/Q pair left around
a Pad (before: one pair per Pad, and int8 slower than float; benchmarks/pad_folding.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from edgepack.calibration.fold_pads import fold_pads
from torch import nn
from torch.nn import functional

from edgepack.convert_file import convert_file
from tests.converters.torch_check import export

SHAPE = [1, 3, 16, 16]


class PaddedNet(nn.Module):
    """Every foldable kind: zero Pad -> strided Conv (TF 'same', asymmetric), F.pad -> depthwise Conv, zero Pad ->
    AveragePool counting padding, -inf Pad -> MaxPool (timm's MaxPool2dSame)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, 2), nn.ReLU6())
        self.depthwise, self.pointwise = nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 1)
        self.average = nn.Sequential(nn.ZeroPad2d(1), nn.AvgPool2d(3, 1, count_include_pad=True))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = self.pointwise(torch.relu(self.depthwise(functional.pad(x, (1, 1, 1, 1)))))
        x = self.average(x)
        x = functional.max_pool2d(functional.pad(x, (0, 1, 0, 1), value=-float("inf")), 3, 2)
        return self.head(x)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("padded")
    torch.manual_seed(0)
    path = export(PaddedNet().eval(), folder / "padded.onnx", (torch.randn(*SHAPE),), ["image"], ["out"])
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", image=rng.standard_normal((32, *SHAPE[1:]), np.float32))
    return path, folder / "calib.npz"


def test_every_pad_is_folded_and_the_float_outputs_are_unchanged(padded):
    import onnxruntime as ort

    model = onnx.load(str(padded[0]))
    folding = fold_pads(model)
    ops = Counter(n.op_type for n in folding.model.graph.node)
    assert len(folding.folded) == 4 and ops["Pad"] == 0 and ops["Conv"] == 4
    assert sum(n.op_type == "Pad" for n in model.graph.node) == 4  # the input is left alone
    onnx.checker.check_model(folding.model)
    image = np.random.default_rng(1).standard_normal((8, *SHAPE[1:]), np.float32)
    before, after = (ort.InferenceSession(m.SerializeToString()).run(None, {"image": image})[0]
                     for m in (model, folding.model))  # fmt: skip
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_a_pad_whose_value_the_reader_does_not_pad_with_stays():
    """A Pad of ones before a Conv, and a Pad of zeros before a MaxPool (zeros can win a maximum), are kept."""
    node = onnx.helper.make_node
    graph = onnx.helper.make_graph(
        [node("Pad", ["x", "pads", "one"], ["p1"]), node("Conv", ["p1", "w"], ["c"]),
         node("Pad", ["c", "pads"], ["p2"]), node("MaxPool", ["p2"], ["y"], kernel_shape=[2, 2])],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
         onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         onnx.numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")])  # fmt: skip
    assert fold_pads(onnx.helper.make_model(graph)).folded == []


def test_the_int8_onnx_file_has_no_float_conv_and_no_dq_q_around_pads_after_onnxruntime_fusion(padded, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "padded.int8.onnx"
    result = convert_file(padded[0], to="onnx", out=out, input_shapes=[], precision="int8", calib=padded[1])
    assert result["cosine_similarity"] >= 0.99  # verified against the unfolded float source
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 4 and ops["Conv"] == ops["FusedConv"] == ops["Pad"] == 0, ops
    # the input's QuantizeLinear and the output's DequantizeLinear, nothing between (before: 4 more pairs)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops


def test_the_tflite_file_of_the_folded_model_is_verified(padded, tmp_path):
    out = tmp_path / "padded.int8.tflite"
    result = convert_file(padded[0], to="tflite", out=out, input_shapes=[], precision="int8", calib=padded[1])
    assert result["cosine_similarity"] >= 0.99  # the lowering pads the folded Convs (asymmetric) itself
