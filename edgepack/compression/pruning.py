"""Unstructured magnitude pruning of Conv/Linear weights: one shot, or gradual over fine-tuning steps.

Masks are ``torch.nn.utils.prune`` forward pre-hooks (``weight = weight_orig * weight_mask``), so pruned weights
stay zero while an optimizer updates ``weight_orig``; ``prune.remove`` makes the zeros permanent and leaves a plain
state_dict. Zeros in a dense tensor do not shrink the file: they only pay off once the file is compressed.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn
from torch.nn.utils import prune

from edgepack.compression.options import Scope
from edgepack.core.errors import PruningError, closest_names

PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
PRUNABLE_TYPE_NAMES = "Conv1d, Conv2d, Conv3d, ConvTranspose1d/2d/3d, Linear"


def check_fraction(value: float, what: str) -> None:
    """Fractions of weights or channels to remove must lie strictly between 0 and 1."""
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise PruningError(
            f"{what} {value!r} is outside the allowed open interval (0, 1); "
            f"give the fraction to remove, e.g. 0.5 for half"
        )


def parse_choice(kind: type[StrEnum], value, what: str):
    """``value`` as a member of ``kind``; anything else is a PruningError listing the allowed values."""
    try:
        return kind(value)
    except ValueError:
        raise PruningError(f"{what} {value!r} is not one of: {', '.join(kind)}") from None


def prunable_layers(module: nn.Module, layers: list[str] | None = None) -> dict[str, nn.Module]:
    """{name: Conv/Linear module}: all of them, or the named ones after checking each name."""
    everything = {name: m for name, m in module.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if layers is None:
        return everything
    named = dict(module.named_modules())
    for name in layers:
        check_layer_name(name, named, everything)
    return {name: named[name] for name in layers}


def check_layer_name(name: str, named: dict[str, nn.Module], prunable: dict[str, nn.Module]) -> None:
    if name not in named:
        close = closest_names(name, named)
        hint = f"; did you mean {', '.join(map(repr, close))}" if close else ""
        raise PruningError(
            f"layer {name!r} is not a module of the model{hint}. Prunable layers: {', '.join(prunable) or 'none'}"
        )
    if not isinstance(named[name], PRUNABLE_TYPES):
        raise PruningError(
            f"layer {name!r} is a {type(named[name]).__name__}, which has no prunable weight; "
            f"prunable types: {PRUNABLE_TYPE_NAMES}. Prunable layers: {', '.join(prunable) or 'none'}"
        )


def magnitude_prune(
    module: nn.Module, *, sparsity: float, scope: Scope | str = Scope.LAYER, layers: list[str] | None = None
) -> dict[str, float]:
    """Zero the smallest-magnitude ``sparsity`` fraction of Conv/Linear weights in place (per layer or globally).

    Returns {layer name: measured fraction of zero weights}.
    """
    check_fraction(sparsity, "sparsity")
    scope = parse_choice(Scope, scope, "scope")
    targets = prunable_layers(module, layers)
    add_masks(targets)
    raise_sparsity(targets, sparsity, scope)
    remove_masks(targets)
    return zero_fractions(targets)


def add_masks(targets: dict[str, nn.Module]) -> None:
    """An all-ones mask on each weight (no-op for weights that already carry one)."""
    for layer in targets.values():
        if not prune.is_pruned(layer):
            prune.identity(layer, "weight")


def remove_masks(targets: dict[str, nn.Module]) -> None:
    """Fold each mask into its weight: the zeros become plain values and the hooks go."""
    for layer in targets.values():
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")


def raise_sparsity(targets: dict[str, nn.Module], sparsity: float, scope: Scope) -> None:
    """Grow the masks to ``sparsity`` (per layer or over all layers), never unmasking a pruned weight.

    torch's pruning containers apply a new amount to the still-unpruned weights only, so we pass the number of
    weights still to prune (an int) rather than the fraction.
    """
    if scope is Scope.GLOBAL:
        total = sum(layer.weight_mask.numel() for layer in targets.values())
        extra = round(sparsity * total) - sum(masked_count(layer) for layer in targets.values())
        if extra > 0:
            pairs = [(layer, "weight") for layer in targets.values()]
            prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=extra)
        return
    for layer in targets.values():
        extra = round(sparsity * layer.weight_mask.numel()) - masked_count(layer)
        if extra > 0:
            prune.l1_unstructured(layer, "weight", amount=extra)


def masked_count(layer: nn.Module) -> int:
    return int((layer.weight_mask == 0).sum())


def zero_fractions(targets: dict[str, nn.Module]) -> dict[str, float]:
    """{layer: fraction of its (effective) weight that is exactly zero}."""
    return {name: float((layer.weight == 0).float().mean()) for name, layer in targets.items()}


def polynomial_sparsity(
    step: int, *, initial: float, final: float, begin_step: int, end_step: int, exponent: float = 3
) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^exponent, clamped outside [t0, t1].

    Pruning fast early, while the network has redundant weights, and slowly at the end, when few are left.
    """
    if end_step <= begin_step:
        raise PruningError(f"end_step {end_step} must be greater than begin_step {begin_step}")
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** exponent


class GradualPruner:
    """Raises the Conv/Linear weight sparsity on the polynomial schedule as fine-tuning calls ``step(step)``.

    Masks stay on (forward pre-hooks) between steps, so pruned weights remain zero through optimizer updates;
    ``finish()`` prunes to the final sparsity and makes the zeros permanent.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        frequency: int = 1,
        initial_sparsity: float = 0.0,
        scope: Scope | str = Scope.LAYER,
        layers: list[str] | None = None,
    ):
        check_fraction(final_sparsity, "final_sparsity")
        check_schedule(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
        self.targets = prunable_layers(module, layers)
        self.final_sparsity, self.initial_sparsity = final_sparsity, initial_sparsity
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self.scope = parse_choice(Scope, scope, "scope")
        self.current_sparsity = 0.0
        add_masks(self.targets)

    def target(self, step: int) -> float:
        return polynomial_sparsity(
            step,
            initial=self.initial_sparsity,
            final=self.final_sparsity,
            begin_step=self.begin_step,
            end_step=self.end_step,
        )

    def step(self, step: int) -> float:
        """Prune up to the schedule's sparsity if ``step`` is a pruning step; returns the current target sparsity."""
        due = step >= self.end_step or (step >= self.begin_step and (step - self.begin_step) % self.frequency == 0)
        target = self.target(step)
        if due and target > self.current_sparsity:
            with torch.no_grad():
                raise_sparsity(self.targets, target, self.scope)
            self.current_sparsity = target
        return self.current_sparsity

    def finish(self) -> dict[str, float]:
        """Reach the final sparsity, fold the masks into the weights; returns {layer: zero fraction}."""
        with torch.no_grad():
            raise_sparsity(self.targets, self.final_sparsity, self.scope)
        remove_masks(self.targets)
        self.current_sparsity = self.final_sparsity
        return zero_fractions(self.targets)


def check_schedule(initial: float, final: float, begin_step: int, end_step: int, frequency: int) -> None:
    if not 0 <= initial < final:
        raise PruningError(f"initial_sparsity {initial!r} must be in [0, final_sparsity {final!r})")
    if begin_step < 0 or end_step <= begin_step:
        raise PruningError(
            f"pruning steps begin_step={begin_step}, end_step={end_step}: need 0 <= begin_step < end_step"
        )
    if frequency < 1:
        raise PruningError(f"frequency {frequency!r} must be a positive number of steps between pruning updates")
