"""Low-rank factorisation: the factors' rank, the SVD's optimal error, parameter savings, the energy rule, skipped
layers, rebuilding the structure for a cached state_dict, and the two-layer structure in the exported ONNX."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.compression.factorisation import apply_structure, factorise
from edgepack.core.errors import LowRankError
from tests import models

X = torch.from_numpy(np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))


def seeded(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory().eval()


def composed_weight(pair: nn.Sequential, kind: str) -> torch.Tensor:
    """The single weight the two factors multiply out to, in the original layer's shape."""
    first, second = pair[0].weight.detach().double(), pair[1].weight.detach().double()
    if kind == "linear":
        return second @ first
    if kind == "conv_channel":
        return torch.einsum("nr,rcij->ncij", second[:, :, 0, 0], first)
    return torch.einsum("nrj,rci->ncij", second[:, :, 0, :], first[..., 0])  # conv_spatial


def matrix_view(weight: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return weight
    if kind == "conv_channel":
        return weight.reshape(weight.shape[0], -1)
    out, cin, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(cin * kh, out * kw)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("factory", "conv"), [("conv_net", "channel"), ("conv_net", "spatial"), ("mlp", "channel")])
def test_factors_have_the_rank_and_the_optimal_error_and_fewer_params(factory, conv):
    model = seeded(getattr(models, factory))
    originals = {n: m.weight.detach().double().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    before = n_params(model)
    report = factorise(model, rank=3, conv=conv)
    assert report.factorised, report.to_dict()
    for layer in report.factorised:
        pair = model.get_submodule(layer.name)
        assert isinstance(pair, nn.Sequential) and len(pair) == 2
        assert layer.params_after == n_params(pair) < layer.params_before
        composed = matrix_view(composed_weight(pair, layer.kind), layer.kind)
        assert torch.linalg.matrix_rank(composed).item() == layer.rank == 3
        # Eckart-Young: the truncated SVD's squared error is exactly the discarded squared singular values.
        original = matrix_view(originals[layer.name], layer.kind)
        singular = torch.linalg.svdvals(original)
        error = torch.linalg.matrix_norm(original - composed) ** 2
        assert error.item() == pytest.approx((singular[3:] ** 2).sum().item(), rel=1e-4)
        assert layer.energy_kept == pytest.approx(((singular[:3] ** 2).sum() / (singular**2).sum()).item(), rel=1e-5)
    assert n_params(model) == before - report.params_saved < before


def rank_deficient(shape: tuple[int, ...], kind: str, rank: int, seed: int) -> torch.Tensor:
    """A weight whose matrix view (for ``kind``) has exactly ``rank``."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = matrix_view(torch.zeros(shape), kind).shape
    matrix = torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)
    if kind == "conv_spatial":
        out, cin, kh, kw = shape
        return matrix.reshape(cin, kh, out, kw).permute(2, 0, 1, 3).contiguous()
    return matrix.reshape(shape)


@pytest.mark.parametrize("conv", ["channel", "spatial"])
def test_full_rank_of_the_weight_reproduces_the_layer_output(conv):
    model = seeded(models.conv_net)
    with torch.no_grad():
        model[3].weight.copy_(rank_deficient((16, 8, 3, 3), f"conv_{conv}", 4, seed=1))
        model[9].weight.copy_(rank_deficient((10, 16), "linear", 4, seed=2))
    reference = model(X)
    report = factorise(model, rank=4, layers=["3", "9"], conv=conv)
    assert [(layer.name, layer.rank) for layer in report.factorised] == [("3", 4), ("9", 4)]
    assert all(layer.energy_kept == pytest.approx(1.0) for layer in report.factorised)
    torch.testing.assert_close(model(X), reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(seeded(models.conv_net)(X), reference, atol=1e-3)  # the weights really mattered


def layer_with_spectrum(singular: list[float], shape=(10, 12)) -> nn.Linear:
    generator = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(shape[0], len(singular), generator=generator))
    v, _ = torch.linalg.qr(torch.randn(shape[1], len(singular), generator=generator))
    layer = nn.Linear(shape[1], shape[0])
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(torch.tensor(singular)) @ v.T)
    return layer


# Singular values 6, 4, 2, 1: squares 36, 16, 4, 1 of 57. Cumulative energy 0.632, 0.912, 0.982, 1.
@pytest.mark.parametrize(
    ("energy", "rank", "kept"), [(0.5, 1, 36 / 57), (0.9, 2, 52 / 57), (0.95, 3, 56 / 57), (1.0, 4, 1.0)]
)
def test_energy_picks_the_smallest_rank_that_keeps_it(energy, rank, kept):
    model = nn.Sequential(layer_with_spectrum([6.0, 4.0, 2.0, 1.0]))
    report = factorise(model, energy=energy)
    (layer,) = report.layers
    assert (layer.rank, layer.skipped) == (rank, None)
    assert layer.energy_kept == pytest.approx(kept, rel=1e-5)
    assert layer.params_after == rank * (12 + 10) + 10
    assert torch.linalg.matrix_rank(model[0][1].weight @ model[0][0].weight).item() == rank


def test_layers_that_would_not_save_params_are_skipped_and_reported():
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64))  # 4x64: even rank 1 costs 68 + 64 bias
    report = factorise(model, rank=4)
    skipped, done = report.layers
    assert isinstance(model[0], nn.Linear) and skipped.params_after == skipped.params_before == 4 * 64 + 64
    assert "no saving" in skipped.skipped and skipped.rank == 4
    assert done.name == "2" and done.params_after == 4 * 128 + 64 and report.params_saved == 64 * 64 - 4 * 128
    assert list(report.structure()) == ["2"]


def test_grouped_and_spatial_1x1_convs_are_skipped_with_the_reason():
    model = seeded(models.depthwise_net)
    report = {layer.name: layer for layer in factorise(model, rank=2, conv="spatial").layers}
    assert "groups=16" in report["3"].skipped
    assert "1x1" in report["6"].skipped
    assert report["0"].skipped is None and report["0"].kind == "conv_spatial"
    assert isinstance(model[3], nn.Conv2d) and isinstance(model[6], nn.Conv2d) and isinstance(model[0], nn.Sequential)
    channel = {layer.name: layer for layer in factorise(seeded(models.depthwise_net), rank=2).layers}
    assert channel["6"].skipped is None and channel["6"].params_after == 2 * (16 + 24) + 24


@pytest.mark.parametrize("conv", ["channel", "spatial"])
def test_apply_structure_rebuilds_a_model_that_loads_the_factorised_state_dict(conv, tmp_path):
    model = seeded(models.conv_net)
    report = factorise(model, rank=3, conv=conv)
    torch.save(model.state_dict(), tmp_path / "factorised.pt")
    structure = json.loads(json.dumps(report.structure()))
    fresh = seeded(models.conv_net, seed=7)
    apply_structure(fresh, structure)
    fresh.load_state_dict(torch.load(tmp_path / "factorised.pt"))  # strict: every key and shape must match
    assert torch.equal(fresh.eval()(X), model(X))
    assert n_params(fresh) == n_params(model)


@pytest.mark.parametrize(("factory", "conv"), [("conv_net", "channel"), ("conv_net", "spatial"), ("mlp", "channel")])
def test_exported_onnx_holds_two_layers_per_factorised_layer_with_the_rank_inside(factory, conv, tmp_path):
    import onnx
    import onnxruntime as ort
    from edgepack.converters.torch_to_onnx import export_to_onnx

    model = seeded(getattr(models, factory))
    report = factorise(model, rank=3, conv=conv)
    path = tmp_path / "model.onnx"
    export_to_onnx(model, (X,), path, input_names=["x"], output_names=["y"], opset=18, dynamo=True)
    graph = onnx.load(path).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    weights = [shapes[n.input[1]] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert weights == [tuple(m.weight.shape) for m in layers]  # same order: forward order of these Sequentials
    original = [m for m in getattr(models, factory)().modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weights) == len(original) + len(report.factorised)  # each factorised layer became two
    for layer in report.factorised:
        first, second = model.get_submodule(layer.name)
        assert first.weight.shape[0] == second.weight.shape[1] == layer.rank == 3
        assert tuple(first.weight.shape) in weights and tuple(second.weight.shape) in weights
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": X.numpy()})[0], model(X).detach().numpy(), atol=1e-5)


def test_bad_settings_are_rejected_with_what_to_do():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 8, 3))
    model.add_module("conv2", nn.Conv2d(8, 8, 3))
    model.add_module("norm", nn.BatchNorm2d(8))
    cases = [
        ({}, "exactly one of rank and energy"),
        ({"rank": 2, "energy": 0.9}, "exactly one of rank and energy"),
        ({"rank": 0}, "integer >= 1"),
        ({"energy": 0.0}, "outside (0, 1]"),
        ({"energy": 1.5}, "outside (0, 1]"),
        ({"rank": 2, "layers": ["conv3"]}, "did you mean conv2, conv1?"),
        ({"rank": 2, "layers": ["norm"]}, "'norm' is a BatchNorm2d"),
        ({"rank": 2, "conv": "depth"}, "allowed: channel, spatial"),
    ]
    for kwargs, message in cases:
        with pytest.raises(LowRankError, match=re.escape(message)):
            factorise(model, **kwargs)
    assert isinstance(model.conv1, nn.Conv2d)  # nothing was changed by a rejected call


def test_apply_structure_rejects_a_structure_from_another_model():
    with pytest.raises(LowRankError, match="'fc' does not exist"):
        apply_structure(seeded(models.mlp), {"fc": {"kind": "linear", "rank": 2}})
    with pytest.raises(LowRankError, match="model has a Linear there"):
        apply_structure(seeded(models.mlp), {"1": {"kind": "conv_channel", "rank": 2}})
    with pytest.raises(LowRankError, match="expected"):
        apply_structure(seeded(models.mlp), {"1": {"kind": "linear", "rank": 0}})
