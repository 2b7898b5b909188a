"""Unstructured magnitude pruning: exact zero fractions (per layer and with one global threshold), the Zhu & Gupta
schedule, gradual pruning through fine-tuning, and clear errors for bad settings."""

from __future__ import annotations

import pytest
import torch
from edgepack.calibration.sources import digits_split
from torch import nn

from edgepack.compression.pruning import GradualPruner, magnitude_prune, polynomial_sparsity
from edgepack.core.errors import PruningError
from tests import models
from tests.edgepack.pruning_helpers import conv_net_with, quick_conv_net_weights

LAYERS = {"0": 72, "3": 1152, "9": 160}  # conv_net's Conv/Linear layers and their weight counts


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, torch.Tensor]:
    return quick_conv_net_weights(tmp_path_factory.mktemp("w"), epochs=6)


def trained(weights) -> nn.Module:
    return conv_net_with(weights).train()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_layer_scope_prunes_each_layer_to_the_fraction(weights, sparsity):
    model = trained(weights)
    fractions = magnitude_prune(model, sparsity=sparsity)
    assert fractions == pytest.approx({name: round(sparsity * n) / n for name, n in LAYERS.items()})
    for name, layer in dict(model.named_modules()).items():
        if name in LAYERS:
            original = weights[f"{name}.weight"].abs()
            kept = layer.weight != 0
            assert float((layer.weight == 0).float().mean()) == fractions[name]
            assert original[~kept].max() <= original[kept].min()  # the smallest magnitudes went
            assert torch.equal(layer.weight[kept], weights[f"{name}.weight"][kept])  # the rest are untouched


def test_global_scope_shares_one_threshold(weights):
    model = trained(weights)
    fractions = magnitude_prune(model, sparsity=0.6, scope="global")
    zeros = sum(fractions[name] * n for name, n in LAYERS.items())
    assert round(zeros) == round(0.6 * sum(LAYERS.values()))
    assert len({round(f, 3) for f in fractions.values()}) == 3  # layers differ: the threshold is global
    pruned, kept = [], []
    for name in LAYERS:
        original = weights[f"{name}.weight"].abs()
        mask = dict(model.named_modules())[name].weight != 0
        pruned.append(original[~mask].max())
        kept.append(original[mask].min())
    assert min(kept) >= max(pruned)


def test_state_dict_is_plain_after_pruning(weights):
    model = trained(weights)
    magnitude_prune(model, sparsity=0.5, layers=["3"])
    state = model.state_dict()
    assert set(state) == set(weights)
    assert not any(layer._forward_pre_hooks for layer in model.modules())
    assert torch.equal(state["0.weight"], weights["0.weight"])  # not named: untouched
    assert float((state["3.weight"] == 0).float().mean()) == 0.5


def test_polynomial_schedule_values():
    def at(step, initial=0.0):
        return polynomial_sparsity(step, initial=initial, final=0.8, begin_step=10, end_step=20)

    assert at(0) == 0.0 and at(10) == 0.0
    assert at(12) == pytest.approx(0.8 - 0.8 * 0.8**3)  # 0.3904
    assert at(15) == pytest.approx(0.7)  # 0.8 - 0.8 / 8
    assert at(15, initial=0.2) == pytest.approx(0.725)
    assert at(20) == pytest.approx(0.8) and at(99) == pytest.approx(0.8)


def test_gradual_pruning_keeps_zeros_through_fine_tuning(weights):
    torch.manual_seed(0)
    model = trained(weights)
    pruner = GradualPruner(model, final_sparsity=0.5, begin_step=0, end_step=48, frequency=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    layer = model[3]
    history, previous_mask = [], torch.ones_like(layer.weight_mask)
    for step, (images, labels) in enumerate(train_batches(60)):
        history.append(pruner.step(step))
        assert torch.all(layer.weight_mask <= previous_mask)  # a pruned weight is never revived
        previous_mask = layer.weight_mask.clone()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        model(images[:1])  # the pre-hook recomputes weight = weight_orig * mask
        assert torch.all(layer.weight[layer.weight_mask == 0] == 0)
    first_raise = 0.5 * (1 - (1 - 4 / 48) ** 3)
    assert history[:8] == pytest.approx([0, 0, 0, 0] + [first_raise] * 4)
    assert history[-1] == 0.5
    assert pruner.finish() == {name: 0.5 for name in LAYERS}
    assert set(model.state_dict()) == set(weights)
    one_shot = trained(weights)
    magnitude_prune(one_shot, sparsity=0.5)
    # Measured: dense 0.86, one-shot 0.25, gradual with 60 fine-tuning steps 0.75 on held-out digits.
    assert held_out_accuracy(model) > max(0.6, held_out_accuracy(one_shot) + 0.2)


def train_batches(count: int, size: int = 48):
    images, labels = (torch.from_numpy(a) for a in digits_split("train"))
    order = torch.cat([torch.randperm(len(images)) for _ in range(3)])
    return [(images[batch], labels[batch]) for batch in order.split(size)[:count]]


def held_out_accuracy(model: nn.Module) -> float:
    images, labels = (torch.from_numpy(a) for a in digits_split("test"))
    with torch.no_grad():
        return float((model.eval()(images).argmax(1) == labels).float().mean())


@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.2])
def test_sparsity_outside_open_interval(sparsity):
    with pytest.raises(PruningError, match=rf"sparsity {sparsity}.*open interval \(0, 1\)"):
        magnitude_prune(models.conv_net(), sparsity=sparsity)
    with pytest.raises(PruningError, match=r"final_sparsity.*open interval \(0, 1\)"):
        GradualPruner(models.conv_net(), final_sparsity=sparsity, begin_step=0, end_step=10)


def test_unknown_layer_lists_close_names_and_prunable_layers():
    with pytest.raises(PruningError, match=r"layer '3x' is not a module.*did you mean '3'.*Prunable layers: 0, 3, 9"):
        magnitude_prune(models.conv_net(), sparsity=0.5, layers=["3x"])


def test_layer_without_prunable_weight_names_the_prunable_types():
    with pytest.raises(PruningError, match=r"layer '1' is a BatchNorm2d.*prunable types: Conv1d.*Linear"):
        magnitude_prune(models.conv_net(), sparsity=0.5, layers=["1"])


def test_unknown_scope_lists_the_choices():
    model = models.conv_net()
    with pytest.raises(PruningError, match=r"scope 'everywhere' is not one of: layer, global"):
        magnitude_prune(model, sparsity=0.5, scope="everywhere")
    assert not any(layer._forward_pre_hooks for layer in model.modules())


def test_bad_schedule_is_rejected():
    with pytest.raises(PruningError, match=r"begin_step=10, end_step=10"):
        GradualPruner(models.conv_net(), final_sparsity=0.5, begin_step=10, end_step=10)
    with pytest.raises(PruningError, match=r"frequency 0"):
        GradualPruner(models.conv_net(), final_sparsity=0.5, begin_step=0, end_step=10, frequency=0)
