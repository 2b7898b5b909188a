"""Low-rank factorisation: truncated SVD turns one Linear or Conv2d into two smaller layers, in place.

A Linear(in, out) becomes Linear(in, r, bias=False) -> Linear(r, out) with W ~ (U S^1/2)(S^1/2 V^T). A Conv2d either
keeps its kernel in the first conv and mixes channels in a 1x1 ("channel"), or splits the kernel into a kh x 1 and a
1 x kw conv ("spatial", Jaderberg et al. 2014). A layer is factorised only where the two factors hold fewer
parameters than the original; the report says why each other layer was left alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

import torch
from torch import nn

from edgepack.compression.options import ConvDecomposition
from edgepack.core.errors import LowRankError, closest_names


class FactorKind(StrEnum):
    LINEAR = "linear"
    CONV_CHANNEL = "conv_channel"
    CONV_SPATIAL = "conv_spatial"


@dataclass
class LayerFactorisation:
    """One layer's outcome: factorised (rank and energy set) or skipped (reason set)."""

    name: str
    kind: str
    params_before: int
    params_after: int
    rank: int | None = None
    energy_kept: float | None = None
    skipped: str | None = None


@dataclass
class LowRankReport:
    layers: list[LayerFactorisation] = field(default_factory=list)

    @property
    def factorised(self) -> list[LayerFactorisation]:
        return [layer for layer in self.layers if layer.skipped is None]

    @property
    def params_saved(self) -> int:
        return sum(layer.params_before - layer.params_after for layer in self.layers)

    def structure(self) -> dict[str, dict]:
        """What apply_structure needs to rebuild the factorised model: {layer name: {"kind", "rank"}} (JSON-ready)."""
        return {layer.name: {"kind": layer.kind, "rank": layer.rank} for layer in self.factorised}

    def to_dict(self) -> dict:
        return {"params_saved": self.params_saved, "layers": [asdict(layer) for layer in self.layers]}


def factorise(
    module: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    layers: list[str] | None = None,
    conv: ConvDecomposition | str = ConvDecomposition.CHANNEL,
) -> LowRankReport:
    """Replace each chosen Linear/Conv2d of ``module`` by its two truncated-SVD factors where that saves parameters.

    Exactly one of ``rank`` (the same rank for every layer, capped at the matrix's own rank) and ``energy`` (the
    fraction of the squared singular values each layer keeps, in (0, 1]) is given. ``layers`` names modules as
    ``module.named_modules()`` does; None means every Linear and Conv2d.
    """
    _check_budget(rank, energy)
    conv = _conv_decomposition(conv)
    report = LowRankReport()
    for name, layer in _chosen_layers(module, layers).items():
        outcome, replacement = _factorise_layer(name, layer, rank, energy, conv)
        report.layers.append(outcome)
        if replacement is not None:
            _replace(module, name, replacement)
    return report


def apply_structure(module: nn.Module, layers: dict[str, dict]) -> None:
    """Give a fresh instance of the original model the factorised shapes of ``LowRankReport.structure()``.

    The new layers' weights are placeholders: load the factorised state_dict afterwards.
    """
    candidates = _factorisable(module)
    for name, spec in layers.items():
        layer = candidates.get(name)
        if layer is None:
            raise LowRankError(_unknown_layer_message(name, candidates, module))
        kind, rank = spec.get("kind"), spec.get("rank")
        if kind not in _BUILDERS or not isinstance(rank, int) or rank < 1:
            raise LowRankError(
                f"saved low-rank structure for layer {name!r} is {spec}; expected {{'kind': one of "
                f"{sorted(_BUILDERS)}, 'rank': an integer >= 1}}. Re-run the low_rank stage to rebuild it"
            )
        _check_kind_fits(name, layer, kind)
        _replace(module, name, _BUILDERS[kind](layer, rank))


# --- checks -------------------------------------------------------------------------------------------------------


def _check_budget(rank: int | None, energy: float | None) -> None:
    if (rank is None) == (energy is None):
        raise LowRankError(
            f"low-rank factorisation needs exactly one of rank and energy, got rank={rank}, energy={energy}; "
            "give 'rank: 8' (the same rank everywhere) or 'energy: 0.9' (keep 90% of each layer's squared "
            "singular values)"
        )
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise LowRankError(f"low-rank rank={rank!r} is not allowed: give an integer >= 1")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise LowRankError(
            f"low-rank energy={energy} is outside (0, 1]: it is the fraction of squared singular values kept, e.g. 0.9"
        )


def _conv_decomposition(conv: ConvDecomposition | str) -> ConvDecomposition:
    try:
        return ConvDecomposition(conv)
    except ValueError:
        allowed = ", ".join(c.value for c in ConvDecomposition)
        raise LowRankError(f"low-rank conv decomposition {conv!r} is unknown; allowed: {allowed}") from None


def _factorisable(module: nn.Module) -> dict[str, nn.Module]:
    # The root cannot be swapped in place, so only named children count.
    return {n: m for n, m in module.named_modules() if n and isinstance(m, nn.Linear | nn.Conv2d)}


def _chosen_layers(module: nn.Module, names: list[str] | None) -> dict[str, nn.Module]:
    candidates = _factorisable(module)
    if names is None:
        return candidates
    modules = dict(module.named_modules())
    for name in names:
        if name not in modules:
            raise LowRankError(_unknown_layer_message(name, candidates, module))
        if name not in candidates:
            raise LowRankError(
                f"low-rank layer {name!r} is a {type(modules[name]).__name__}; only Linear and Conv2d layers can "
                f"be factorised. Factorisable layers: {', '.join(candidates) or 'none'}"
            )
    return {name: candidates[name] for name in names}


def _unknown_layer_message(name: str, candidates: dict[str, nn.Module], module: nn.Module) -> str:
    close = closest_names(name, candidates) or closest_names(name, [n for n, _ in module.named_modules() if n])
    hint = f"did you mean {', '.join(close)}?" if close else f"factorisable layers: {', '.join(candidates) or 'none'}"
    return f"low-rank layer {name!r} does not exist in the model ({hint}); names are as in model.named_modules()"


def _check_kind_fits(name: str, layer: nn.Module, kind: str) -> None:
    expected = nn.Linear if kind == FactorKind.LINEAR else nn.Conv2d
    if not isinstance(layer, expected):
        raise LowRankError(
            f"saved low-rank structure says layer {name!r} is {kind}, but the model has a {type(layer).__name__} "
            "there; the structure belongs to another model. Re-run the low_rank stage"
        )


# --- one layer ----------------------------------------------------------------------------------------------------


def _factorise_layer(
    name: str, layer: nn.Module, rank: int | None, energy: float | None, conv: ConvDecomposition
) -> tuple[LayerFactorisation, nn.Module | None]:
    kind = _kind(layer, conv)
    label, before = kind.value, _count(layer)
    skip = _unsupported(layer, kind)
    if skip:
        return LayerFactorisation(name, label, before, before, skipped=skip), None
    singular = torch.linalg.svdvals(_MATRICES[kind](layer.weight.detach()))
    r = _choose_rank(singular, rank, energy)
    after = _factored_count(layer, kind, r)
    if after >= before:
        reason = f"rank {r} would need {after} parameters, the layer has {before}: no saving"
        return LayerFactorisation(name, label, before, before, rank=r, skipped=reason), None
    kept = float((singular[:r] ** 2).sum() / (singular**2).sum()) if singular.any() else 1.0
    outcome = LayerFactorisation(name, label, before, after, rank=r, energy_kept=kept)
    return outcome, _build_factors(layer, kind, r)


def _kind(layer: nn.Module, conv: ConvDecomposition) -> FactorKind:
    if isinstance(layer, nn.Linear):
        return FactorKind.LINEAR
    return FactorKind.CONV_SPATIAL if conv == ConvDecomposition.SPATIAL else FactorKind.CONV_CHANNEL


def _unsupported(layer: nn.Module, kind: FactorKind) -> str | None:
    if kind == FactorKind.LINEAR:
        return None
    if layer.groups != 1:
        # Each group is its own small matrix; one SVD across groups would mix channels the layer keeps apart.
        return f"grouped conv (groups={layer.groups}): its weight is not one matrix; depthwise convs are already cheap"
    if kind == FactorKind.CONV_SPATIAL and layer.kernel_size == (1, 1):
        return "1x1 conv has no spatial extent to split; use conv: channel to factorise it"
    return None


def _choose_rank(singular: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """The given rank capped at the matrix rank, or the smallest rank whose squared singular values reach ``energy``."""
    if rank is not None:
        return min(rank, len(singular))
    squares = singular.double() ** 2
    fraction = torch.cumsum(squares, 0) / squares.sum()
    # A hair of tolerance so energy=1.0 (or a value hit exactly) is not lost to rounding in the cumulative sum.
    return int((fraction < energy - 1e-9).sum()) + 1 if squares.sum() > 0 else 1


def _count(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def _factored_count(layer: nn.Module, kind: FactorKind, r: int) -> int:
    rows, cols = _MATRICES[kind](layer.weight).shape
    bias = 0 if layer.bias is None else layer.bias.numel()
    return r * (rows + cols) + bias


def _replace(module: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name), child, replacement)


# --- the matrices and their factors -------------------------------------------------------------------------------
# Each kind has a matrix view of the weight (whose SVD gives the factors) and a builder of the two layers.


def _linear_matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight  # (out, in)


def _channel_matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)  # (out, in*kh*kw)


def _spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    out, cin, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(cin * kh, out * kw)  # rows (c, i), columns (n, j)


_MATRICES = {
    FactorKind.LINEAR: _linear_matrix,
    FactorKind.CONV_CHANNEL: _channel_matrix,
    FactorKind.CONV_SPATIAL: _spatial_matrix,
}


def _build_factors(layer: nn.Module, kind: FactorKind, r: int) -> nn.Sequential:
    """The two layers of ``kind`` at rank r, with weights from the truncated SVD: left = U S^1/2, right = S^1/2 V^T."""
    weight = layer.weight.detach()
    factors = _BUILDERS[kind](layer, r).to(weight.device, weight.dtype)
    # SVD in float64: the split must not add error of its own on top of the truncation.
    u, s, vh = torch.linalg.svd(_MATRICES[kind](weight.double()), full_matrices=False)
    root = s[:r].sqrt()
    left, right = (u[:, :r] * root).to(weight.dtype), (root[:, None] * vh[:r]).to(weight.dtype)
    first, second = _FACTOR_WEIGHTS[kind](left, right, layer.weight.shape)
    with torch.no_grad():
        factors[0].weight.copy_(first)
        factors[1].weight.copy_(second)
        if layer.bias is not None:
            factors[1].bias.copy_(layer.bias)
    return factors


def _linear_weights(left, right, shape):
    return right, left  # first: (r, in), second: (out, r)


def _channel_weights(left, right, shape):
    out, cin, kh, kw = shape
    return right.reshape(-1, cin, kh, kw), left[:, :, None, None]


def _spatial_weights(left, right, shape):
    out, cin, kh, kw = shape
    vertical = left.reshape(cin, kh, -1).permute(2, 0, 1)[..., None]  # (r, in, kh, 1)
    horizontal = right.reshape(-1, out, kw).permute(1, 0, 2)[:, :, None, :]  # (out, r, 1, kw)
    return vertical, horizontal


_FACTOR_WEIGHTS = {
    FactorKind.LINEAR: _linear_weights,
    FactorKind.CONV_CHANNEL: _channel_weights,
    FactorKind.CONV_SPATIAL: _spatial_weights,
}


def _linear_factors(layer: nn.Linear, r: int) -> nn.Sequential:
    first = nn.Linear(layer.in_features, r, bias=False)
    return nn.Sequential(first, nn.Linear(r, layer.out_features, bias=layer.bias is not None))


def _channel_factors(layer: nn.Conv2d, r: int) -> nn.Sequential:
    first = nn.Conv2d(
        layer.in_channels,
        r,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=False,
        padding_mode=layer.padding_mode,
    )
    return nn.Sequential(first, nn.Conv2d(r, layer.out_channels, 1, bias=layer.bias is not None))


def _spatial_factors(layer: nn.Conv2d, r: int) -> nn.Sequential:
    # The kernel splits into a vertical and a horizontal pass; stride, padding and dilation split with it.
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    ph, pw = (layer.padding, layer.padding) if isinstance(layer.padding, str) else layer.padding
    mode = layer.padding_mode
    vertical = nn.Conv2d(
        layer.in_channels,
        r,
        (kh, 1),
        stride=(sh, 1),
        padding=_pair_padding(ph, 0),
        dilation=(dh, 1),
        bias=False,
        padding_mode=mode,
    )
    horizontal = nn.Conv2d(
        r,
        layer.out_channels,
        (1, kw),
        stride=(1, sw),
        padding=_pair_padding(0, pw),
        dilation=(1, dw),
        bias=layer.bias is not None,
        padding_mode=mode,
    )
    return nn.Sequential(vertical, horizontal)


def _pair_padding(ph: int | str, pw: int | str) -> tuple[int, int] | str:
    # 'same' and 'valid' are per-dimension in torch, so each half keeps the string.
    return ph if isinstance(ph, str) else pw if isinstance(pw, str) else (ph, pw)


_BUILDERS = {
    FactorKind.LINEAR: _linear_factors,
    FactorKind.CONV_CHANNEL: _channel_factors,
    FactorKind.CONV_SPATIAL: _spatial_factors,
}
