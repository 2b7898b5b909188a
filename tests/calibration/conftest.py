"""Fixtures shared by the calibration tests."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch

from tests import models


def export_conv_net(weights, path, *, dynamic_batch: bool) -> onnx.ModelProto:
    """The digits-trained conv net, exported the legacy way (BatchNorm folded into the convs)."""
    model = models.conv_net()
    model.load_state_dict(torch.load(weights, weights_only=True))
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes=axes)  # fmt: skip
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory, trained_weights) -> onnx.ModelProto:
    return export_conv_net(trained_weights("conv_net"), tmp_path_factory.mktemp("ptq") / "conv_net.onnx",
                           dynamic_batch=False)  # fmt: skip


@pytest.fixture(scope="module")
def digits_onnx_any_batch(tmp_path_factory, trained_weights) -> onnx.ModelProto:
    """The same, with a dynamic batch dimension (calibration batches of any size)."""
    return export_conv_net(trained_weights("conv_net"), tmp_path_factory.mktemp("collect") / "conv_net.onnx",
                           dynamic_batch=True)  # fmt: skip


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory) -> onnx.ModelProto:
    """The conv net untrained (seed 0), exported the legacy way: for tests of how ranges are chosen, not accuracy."""
    from edgepack.converters.torch_to_onnx import export_to_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    export_to_onnx(models.conv_net().eval(), (torch.zeros(1, 1, 8, 8),), path, input_names=["image"],
                   output_names=["logits"], opset=17, dynamo=False)  # fmt: skip
    return onnx.load(str(path))
