"""Whole models exported from torch: numbers match onnxruntime, layout stays NHWC without TRANSPOSE ops,
names survive; bad input gets a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgepack.converters.onnx_to_tflite import convert_onnx_to_tflite
from edgepack.converters.runtime import TFLiteSession, open_session
from onnx import helper
from torch import nn

from edgepack.core.errors import ModelFileError, UnsupportedOperatorError
from tests.converters.conftest import convert_and_compare, make_model


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
        )  # fmt: skip

    def forward(self, x):
        return self.features(x)


class MobileBlock(nn.Module):
    """SiLU, hard-swish, squeeze-excite, nearest upsample and erf-GELU: the forms torch exports for modern CNNs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.squeeze = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 1), nn.Sigmoid()
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(8, 6), nn.GELU())

    def forward(self, x):
        x = self.stem(x)
        x = x * self.squeeze(x)
        return self.fc(self.head(self.up(x)))


class ResidualNet(nn.Module):
    """A residual block and ``x.view(x.size(0), -1)``: with a dynamic batch, a Shape/Gather/Concat chain to fold."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(x + self.conv2(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return torch.softmax(self.fc(x.view(x.size(0), -1)), dim=1)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 + 5, 2)

    def forward(self, image, vector):
        pooled = self.conv(image).mean(dim=(2, 3))
        return self.fc(torch.cat([pooled, vector], dim=1))


class FeatureMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class FlattenedFeatures(nn.Module):
    """A classifier that flattens a 4x4 feature map (NCHW order) straight into a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def export(module: nn.Module, path: Path, examples, names, dynamo: bool = False) -> Path:
    torch.manual_seed(0)
    module.eval()
    kwargs = {"dynamo": True} if dynamo else {"dynamo": False, "opset_version": 17}
    if not dynamo:  # Legacy exports with a dynamic batch carry shape arithmetic the preparation pass must fold.
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in names}
    torch.onnx.export(module, examples, str(path), input_names=names, output_names=["out"], **kwargs)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    image = torch.randn(1, 3, 32, 32)
    export(SmallCnn(), folder / "cnn.onnx", (image,), ["image"])
    export(SmallCnn(), folder / "cnn_dynamo.onnx", (image,), ["image"], dynamo=True)
    export(MobileBlock(), folder / "mobile.onnx", (image,), ["image"], dynamo=True)
    export(ResidualNet(), folder / "residual.onnx", (image,), ["image"])
    export(TwoInputs(), folder / "two.onnx", (image, torch.randn(1, 5)), ["image", "vector"])
    export(FeatureMap(), folder / "fmap.onnx", (image,), ["image"])
    return folder


@pytest.mark.parametrize("name", ["cnn", "cnn_dynamo"])
def test_small_cnn_matches_and_has_no_transpose(models, name):
    result = convert_and_compare(models / f"{name}.onnx", models / f"{name}.tflite")
    assert result.max_error <= result.tolerance
    counts = result.conversion.op_counts
    assert counts.get("TRANSPOSE", 0) == 0, counts
    assert counts.get("CONV_2D") == 2 and counts.get("DEPTHWISE_CONV_2D") == 1, counts
    assert counts.get("FULLY_CONNECTED") == 1 and counts.get("MAX_POOL_2D") == 1, counts
    (image,) = result.conversion.inputs
    assert (image.name, image.shape, image.layout, image.perm_from_onnx) == (
        "image",
        [1, 32, 32, 3],
        "NHWC",
        [0, 2, 3, 1],
    )


def test_modern_cnn_block_matches_without_transpose(models):
    result = convert_and_compare(models / "mobile.onnx", models / "mobile.tflite")
    assert result.max_error <= result.tolerance
    counts = result.conversion.op_counts
    assert counts.get("TRANSPOSE", 0) == 0, counts
    assert counts.get("HARD_SWISH") == 1 and counts.get("RESIZE_NEAREST_NEIGHBOR") == 1, counts


def test_residual_net_with_dynamic_batch_folds_shape_arithmetic(models):
    graph_ops = {node.op_type for node in onnx.load(str(models / "residual.onnx")).graph.node}
    assert {"Shape", "Gather", "Reshape"} <= graph_ops  # The chain really is there to fold.
    result = convert_and_compare(models / "residual.onnx", models / "residual.tflite")
    assert result.max_error <= result.tolerance
    assert result.conversion.op_counts.get("TRANSPOSE", 0) == 0, result.conversion.op_counts
    assert result.conversion.inputs[0].shape == [1, 32, 32, 3]


@pytest.mark.parametrize("dynamo", [False, True])
def test_flatten_into_linear_permutes_weights_instead_of_transposing(tmp_path, dynamo):
    # NHWC features flattened in NCHW order would need a TRANSPOSE; reordering the weight rows does not.
    path = export(FlattenedFeatures(), tmp_path / "flat.onnx", (torch.randn(1, 3, 8, 8),), ["image"], dynamo=dynamo)
    result = convert_and_compare(path, tmp_path / "flat.tflite")
    assert result.max_error <= result.tolerance
    assert result.conversion.op_counts["TRANSPOSE"] == 0 and result.conversion.op_counts["FULLY_CONNECTED"] == 1


def test_two_inputs_keep_their_names(models):
    result = convert_and_compare(models / "two.onnx", models / "two.tflite")
    assert result.max_error <= result.tolerance
    image, vector = result.conversion.inputs
    assert (image.name, image.layout, vector.name, vector.shape, vector.perm_from_onnx) == (
        "image", "NHWC", "vector", [1, 5], None,
    )  # fmt: skip
    assert [s.name for s in TFLiteSession(models / "two.tflite").inputs] == ["image", "vector"]


def test_feature_map_output_records_its_layout(models):
    result = convert_and_compare(models / "fmap.onnx", models / "fmap.tflite")
    assert result.max_error <= result.tolerance
    (out,) = result.conversion.outputs
    assert (out.name, out.shape, out.layout, out.perm_from_onnx) == ("out", [1, 32, 32, 4], "NHWC", [0, 2, 3, 1])
    assert TFLiteSession(models / "fmap.tflite").outputs[0].perm_from_onnx == [0, 2, 3, 1]
    assert result.conversion.op_counts.get("TRANSPOSE", 0) == 0


def test_names_tf_rejects_are_mapped_back(tmp_path):
    # TF drops signature keys such as "onnx::x"; the session must still feed and fetch by the ONNX names.
    node = helper.make_node("Relu", ["onnx::x"], ["out:0"])
    onnx.save(make_model([node], {"onnx::x": [2, 3]}, ["out:0"]), tmp_path / "names.onnx")
    result = convert_and_compare(tmp_path / "names.onnx", tmp_path / "names.tflite")
    assert result.max_error <= result.tolerance
    session = TFLiteSession(tmp_path / "names.tflite")
    assert [s.name for s in session.inputs] == ["onnx::x"] and [s.name for s in session.outputs] == ["out:0"]
    assert session.inputs[0].tensor_name != "onnx::x"


@pytest.mark.parametrize("op_type", ["Det", "Hardmax"])
def test_unsupported_op_names_node_and_op(tmp_path, op_type):
    node = helper.make_node(op_type, ["x"], ["y0"], name="my_odd_node")
    model = make_model([node], {"x": [3, 3]}, ["y0"])
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(UnsupportedOperatorError, match=rf"my_odd_node.*{op_type}.*Supported op types: .*Conv"):
        convert_onnx_to_tflite(tmp_path / "odd.onnx", tmp_path / "odd.tflite")
    assert not (tmp_path / "odd.tflite").exists()


def test_unsupported_resize_mode_says_what_is_supported(tmp_path):
    scales = {"s": np.array([1, 1, 2, 2], np.float32)}
    node = helper.make_node("Resize", ["x", "", "s"], ["y0"], name="up", mode="cubic")
    onnx.save(make_model([node], {"x": [1, 3, 4, 4]}, ["y0"], scales), tmp_path / "cubic.onnx")
    with pytest.raises(UnsupportedOperatorError, match="'up'.*Resize mode 'cubic' not supported; supported: nearest"):
        convert_onnx_to_tflite(tmp_path / "cubic.onnx", tmp_path / "cubic.tflite")


def test_non_onnx_file_is_a_model_file_error(tmp_path):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a model")
    with pytest.raises(ModelFileError, match="notes.onnx"):
        convert_onnx_to_tflite(bogus, tmp_path / "out.tflite")
    with pytest.raises(ModelFileError, match="notes.onnx"):
        open_session(bogus)
    with pytest.raises(ModelFileError, match=r"accepted: \.onnx, \.tflite"):
        open_session(tmp_path / "model.pt")


def test_dynamic_spatial_dims_need_an_input_shape(tmp_path):
    node = helper.make_node("Relu", ["pixels"], ["y0"])
    onnx.save(make_model([node], {"pixels": ["batch", 3, "height", "width"]}, ["y0"]), tmp_path / "dyn.onnx")
    with pytest.raises(ModelFileError, match=r"'pixels'.*--input-shape pixels="):
        convert_onnx_to_tflite(tmp_path / "dyn.onnx", tmp_path / "dyn.tflite")
    result = convert_and_compare(tmp_path / "dyn.onnx", tmp_path / "dyn.tflite", input_shapes={"pixels": [1, 3, 8, 6]})
    assert result.conversion.inputs[0].shape == [1, 8, 6, 3]


def test_importing_runtime_does_not_import_tensorflow():
    code = "import sys, converters, converters.runtime, converters.onnx_to_tflite; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
