"""Structured pruning: channels really leave the torch model and its ONNX/TFLite files, dependencies (residual add,
concat, depthwise) stay consistent, the classifier is kept, a pruned state_dict reloads into a fresh model, and bad
input or an untraceable model gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgepack.calibration.sources import digits_split
from edgepack.converters.onnx_to_tflite import convert_onnx_to_tflite
from edgepack.converters.runtime import OnnxSession, TFLiteSession
from edgepack.converters.sparsity import onnx_weight_sparsity, tflite_weight_sparsity
from edgepack.converters.torch_to_onnx import export_to_onnx
from torch import nn

from edgepack.compression.structured import prune_channels, resize_to_state_dict
from edgepack.core.artifacts import from_runtime_layout, to_runtime_layout
from edgepack.core.errors import PruningError
from tests import models
from tests.edgepack.pruning_helpers import conv_net_with, quick_conv_net_weights

EXAMPLE = (torch.zeros(1, 1, 8, 8),)


class ResidualNet(nn.Module):
    """Stem, a depthwise + pointwise block added back to the stem (residual), a side conv concatenated on."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.pointwise = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.side = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.pointwise(self.depthwise(x)))
        x = torch.cat([x, self.side(x)], dim=1)
        return self.head(x.mean((2, 3)))


class TwoHeadNet(nn.Module):
    """Two outputs: class logits and a 4-channel map straight from a conv; neither may change shape."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.map_head = nn.Conv2d(16, 4, 1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.mid(self.trunk(x)))
        return self.classifier(x.mean((2, 3))), torch.sigmoid(self.map_head(x))


class ArgmaxNet(nn.Module):
    """Returns class ids: the output has no gradient, so Torch-Pruning's trace sees no layer at all."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3))).argmax(1)


class FixedViewHead(nn.Module):
    """Flattens with a hard-coded channel count: breaks once the conv before it loses channels."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(x.shape[0], 16 * 4 * 4))


def fixed_view_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2),
                         FixedViewHead())  # fmt: skip


@pytest.fixture(scope="module")
def conv_weights(tmp_path_factory) -> dict[str, torch.Tensor]:
    return quick_conv_net_weights(tmp_path_factory.mktemp("w"), epochs=3)


def residual_net() -> nn.Module:
    torch.manual_seed(0)
    return ResidualNet().eval()


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_conv_net_loses_half_its_channels_but_keeps_its_classifier(conv_weights):
    model = conv_net_with(conv_weights)
    report = prune_channels(model, EXAMPLE, ratio=0.5)
    assert report.channels == {"0": [8, 4], "3": [16, 8], "9": [10, 10]}
    assert report.ignored_layers == ["9"]  # found as the output layer, not named by anyone
    # conv 4x1x9+4, bn 2x4, conv 8x4x9+8, bn 2x8, linear 10x8+10
    assert (report.params_before, report.params_after) == (1466, 450) == (1466, param_count(model))
    assert report.macs_after < 0.3 * report.macs_before
    assert [model[1].num_features, model[9].in_features] == [4, 8]
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_every_output_layer_is_found_and_kept():
    torch.manual_seed(0)
    model = TwoHeadNet().eval()
    report = prune_channels(model, EXAMPLE, ratio=0.5)
    assert sorted(report.ignored_layers) == ["classifier", "map_head"]
    assert report.channels == {"trunk.0": [16, 8], "mid": [16, 8], "map_head": [4, 4], "classifier": [10, 10]}
    logits, heat_map = model(torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 10) and heat_map.shape == (2, 4, 8, 8)


def test_residual_concat_and_depthwise_shrink_together():
    model = residual_net()
    report = prune_channels(model, EXAMPLE, ratio=0.5)
    stem, depthwise, pointwise, side = model.stem[0], model.depthwise[0], model.pointwise[0], model.side[0]
    assert report.channels == {"stem.0": [16, 8], "depthwise.0": [16, 8], "pointwise.0": [16, 8],
                               "side.0": [8, 4], "head": [10, 10]}  # fmt: skip
    assert stem.out_channels == pointwise.out_channels == 8  # both sides of the residual add
    assert depthwise.in_channels == depthwise.out_channels == depthwise.groups == 8
    assert model.head.in_features == stem.out_channels + side.out_channels == 12  # the concatenation
    assert report.params_after == param_count(model) < report.params_before / 2
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "factory, onnx_shapes, tflite_shapes",
    [
        ("conv_net", [[4, 1, 3, 3], [8, 4, 3, 3], [10, 8]], [[4, 3, 3, 1], [8, 3, 3, 4], [10, 8]]),
        ("residual_net", [[8, 1, 3, 3], [8, 1, 3, 3], [8, 8, 1, 1], [4, 8, 3, 3], [10, 12]],
         [[8, 3, 3, 1], [1, 3, 3, 8], [8, 1, 1, 8], [4, 3, 3, 8], [10, 12]]),
    ],
)  # fmt: skip
def test_exported_files_have_the_pruned_channel_counts(conv_weights, tmp_path, factory, onnx_shapes, tflite_shapes):
    model = conv_net_with(conv_weights) if factory == "conv_net" else residual_net()
    prune_channels(model, EXAMPLE, ratio=0.5)
    onnx_path, tflite_path = tmp_path / "pruned.onnx", tmp_path / "pruned.tflite"
    export_to_onnx(model, EXAMPLE, onnx_path, input_names=["image"], output_names=["logits"], opset=18, dynamo=True)
    convert_onnx_to_tflite(onnx_path, tflite_path, input_shapes={"image": [1, 1, 8, 8]})
    assert sorted(row["shape"] for row in onnx_weight_sparsity(onnx_path)) == sorted(onnx_shapes)
    assert sorted(row["shape"] for row in tflite_weight_sparsity(tflite_path)) == sorted(tflite_shapes)
    image = digits_split("test")[0][:1]
    expected = model(torch.from_numpy(image)).detach().numpy()
    np.testing.assert_allclose(OnnxSession(onnx_path).run({"image": image})["logits"], expected, atol=1e-4)
    tflite = TFLiteSession(tflite_path)
    spec_in, spec_out = tflite.inputs[0], tflite.outputs[0]
    logits = tflite.run({spec_in.name: to_runtime_layout(image, spec_in)})[spec_out.name]
    np.testing.assert_allclose(from_runtime_layout(logits, spec_out), expected, atol=1e-4)


def test_bn_scale_keeps_the_channels_with_the_largest_gammas(conv_weights):
    model = conv_net_with(conv_weights)
    gammas = conv_weights["1.weight"].abs()
    prune_channels(model, EXAMPLE, ratio=0.5, importance="bn_scale")
    kept = model[1].weight.detach().abs()
    assert torch.equal(kept.sort().values, gammas.sort().values[4:])


def test_global_scope_prunes_layers_unevenly_and_round_to_rounds(conv_weights):
    layer = prune_channels(conv_net_with(conv_weights), EXAMPLE, ratio=0.3).channels
    assert layer == {"0": [8, 5], "3": [16, 11], "9": [10, 10]}  # kept: 70% of 8 and 16, rounded down
    spread = prune_channels(conv_net_with(conv_weights), EXAMPLE, ratio=0.3, scope="global").channels
    assert spread["0"][1] + spread["3"][1] in (16, 17) and spread["0"][1] != 5  # one ranking over 24 channels
    rounded = prune_channels(conv_net_with(conv_weights), EXAMPLE, ratio=0.3, round_to=4).channels
    assert rounded == {"0": [8, 4], "3": [16, 8], "9": [10, 10]}  # kept counts are multiples of 4


def test_taylor_uses_loss_gradients_and_leaves_none_behind(conv_weights):
    model = conv_net_with(conv_weights)
    images, labels = (torch.from_numpy(a) for a in digits_split("train"))
    batches = [((images[i : i + 128],), labels[i : i + 128]) for i in range(0, 512, 128)]
    running_mean = model[1].running_mean.clone()
    report = prune_channels(model, EXAMPLE, ratio=0.5, importance="taylor", taylor_batches=batches)
    assert report.channels == {"0": [8, 4], "3": [16, 8], "9": [10, 10]}
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    kept_means = model[1].running_mean
    assert all(torch.isclose(running_mean, m).any() for m in kept_means)  # BN statistics were not updated


@pytest.mark.parametrize("factory", ["conv_net", "depthwise_net", "residual_net"])
def test_pruned_state_dict_reloads_into_a_fresh_model(tmp_path, factory):
    make = residual_net if factory == "residual_net" else getattr(models, factory)
    torch.manual_seed(0)
    pruned = make().eval()
    prune_channels(pruned, EXAMPLE, ratio=0.5)
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    state = torch.load(tmp_path / "pruned.pt", weights_only=True)
    fresh = make().eval()
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(state)
    resize_to_state_dict(fresh, state)
    fresh.load_state_dict(state)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(fresh(x), pruned(x))
    assert param_count(fresh) == param_count(pruned) < param_count(make())


@pytest.mark.parametrize("ratio", [0, 1, 1.2, -0.5])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(PruningError, match=rf"ratio {ratio}.*open interval \(0, 1\)"):
        prune_channels(models.conv_net(), EXAMPLE, ratio=ratio)


def test_unknown_ignored_layer_lists_close_names():
    with pytest.raises(
        PruningError,
        match=r"ignored layer 'stem0' is not a module.*did you mean 'stem.0'.*Prunable layers: stem.0, depthwise.0",
    ):
        prune_channels(residual_net(), EXAMPLE, ratio=0.5, ignored_layers=["stem0"])


def test_unknown_importance_lists_the_choices():
    with pytest.raises(PruningError, match=r"importance 'l3' is not one of: l1, l2, bn_scale, taylor"):
        prune_channels(models.conv_net(), EXAMPLE, ratio=0.5, importance="l3")


def test_importance_needs_its_inputs():
    with pytest.raises(PruningError, match=r"'taylor' needs gradients.*taylor_batches"):
        prune_channels(models.conv_net(), EXAMPLE, ratio=0.5, importance="taylor")
    with pytest.raises(PruningError, match=r"'bn_scale'.*Sequential has no BatchNorm"):
        prune_channels(models.mlp(), EXAMPLE, ratio=0.5, importance="bn_scale")
    with pytest.raises(PruningError, match=r"taylor_batches is empty"):
        prune_channels(models.conv_net(), EXAMPLE, ratio=0.5, importance="taylor", taylor_batches=[])


def test_untraceable_module_is_named_with_what_to_do():
    """Torch-Pruning traces the model fine but cannot see the hard-coded view: the pruned model breaks."""
    torch.manual_seed(0)
    model = fixed_view_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        PruningError, match=r"module '4' \(FixedViewHead\).*left unpruned.*ignored_layers.*unstructured"
    ):
        prune_channels(model, EXAMPLE, ratio=0.5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model[2].out_channels == 16
    report = prune_channels(model, EXAMPLE, ratio=0.5, ignored_layers=["2"])  # the advice works
    assert report.channels == {"0": [8, 4], "2": [16, 16], "4.fc": [10, 10]}
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_trace_failure_names_the_module_and_the_cause():
    wrong_channels = (torch.zeros(1, 3, 8, 8),)
    expected = (
        r"tracing Sequential: error in module '0' \(Conv2d\).*input\[1, 3, 8, 8\] to have 1 channels.*check they fit"
    )
    with pytest.raises(PruningError, match=expected):
        prune_channels(models.conv_net(), wrong_channels, ratio=0.5)


def test_model_whose_output_has_no_gradient_is_not_silently_left_alone():
    model = ArgmaxNet()
    with pytest.raises(PruningError, match=r"no channel of ArgmaxNet could be removed.*argmax.*return the logits"):
        prune_channels(model, EXAMPLE, ratio=0.5)
    assert model.conv.out_channels == 8


def test_a_transformer_the_dependency_graph_cannot_follow_is_named_and_left_unpruned():
    model = models.tiny_transformer().eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    tokens = (torch.zeros(1, 8, 8),)
    with pytest.raises(PruningError) as caught:  # Torch-Pruning's own IndexError, from its importance of qkv's group
        prune_channels(model, tokens, ratio=0.5)
    message = str(caught.value)
    assert message.startswith("Torch-Pruning failed pruning the channels of 'blocks.1.attn.qkv': IndexError: index")
    assert "The model was left unpruned" in message and "ignored_layers" in message and "unstructured" in message
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    # What the message advises works: all but the MLPs' first Linear ignored, their hidden width halves.
    kept = [name for name, layer in model.named_modules() if isinstance(layer, nn.Linear) and name[-5:] != "mlp.0"]
    report = prune_channels(model, tokens, ratio=0.5, ignored_layers=kept)
    assert {name: counts for name, counts in report.channels.items() if counts[0] != counts[1]} == {
        "blocks.0.mlp.0": [64, 32], "blocks.1.mlp.0": [64, 32]}  # fmt: skip
