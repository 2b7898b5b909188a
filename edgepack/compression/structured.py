"""Structured pruning: whole channels removed from Conv/Linear layers, so the exported model is smaller and faster.

Torch-Pruning's DependencyGraph finds the layers that must shrink together when a channel goes (the BatchNorm
after a conv, both branches of a residual add, the slices of a concatenation, a depthwise conv's in and out
channels). The layers whose outputs are model outputs are never pruned: that would change the model's interface.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgepack.compression.options import Importance, Scope
from edgepack.compression.pruning import PRUNABLE_TYPES, check_fraction, parse_choice
from edgepack.core.errors import PruningError, closest_names

TaylorBatch = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # (model inputs, class labels)


@dataclass
class ChannelReport:
    """What pruning removed: params and MACs (one example input) before/after, channels per layer."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels: dict[str, list[int]] = field(default_factory=dict)  # {layer: [channels before, channels after]}
    ignored_layers: list[str] = field(default_factory=list)  # named by the caller or found as output layers


def prune_channels(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    ratio: float,
    importance: Importance | str = Importance.L1,
    scope: Scope | str = Scope.LAYER,
    ignored_layers: Iterable[str] = (),
    taylor_batches: Iterable[TaylorBatch] | None = None,
    round_to: int | None = None,
) -> ChannelReport:
    """Remove the ``ratio`` least important output channels of each prunable layer (or globally), in place.

    If the pruned model no longer runs, the module is restored and a PruningError names the failing module.
    """
    check_fraction(ratio, "ratio")
    importance, scope = parse_choice(Importance, importance, "importance"), parse_choice(Scope, scope, "scope")
    check_importance_inputs(module, importance, taylor_batches, round_to)
    ignored = named_layers(module, ignored_layers)
    ignored |= dict(named_layers_of(module, output_layers(build_graph(module, example_inputs))))
    (macs_before, params_before), channels_before = count_ops_and_params(module, example_inputs), channel_counts(module)
    original = {key: value.clone() for key, value in module.state_dict().items()}
    pruner = make_pruner(module, example_inputs, importance, scope, ratio, list(ignored.values()), round_to)
    if importance is Importance.TAYLOR:
        accumulate_loss_gradients(module, taylor_batches)
    step_naming_the_failing_layer(pruner, module, original)
    module.zero_grad(set_to_none=True)
    check_something_pruned(module, channels_before, ignored, round_to)
    check_still_runs(module, example_inputs, original, list(channels_before))
    (macs_after, params_after), after = count_ops_and_params(module, example_inputs), channel_counts(module)
    channels = {name: [count, after[name]] for name, count in channels_before.items()}
    return ChannelReport(params_before, params_after, macs_before, macs_after, channels, list(ignored))


def make_pruner(module, example_inputs, importance: Importance, scope: Scope, ratio: float, ignored, round_to):
    import torch_pruning as tp

    with tracing_errors(module, "building Torch-Pruning's dependency graph of"):
        return tp.pruner.BasePruner(
            module,
            example_inputs,
            importance=make_importance(importance),
            global_pruning=scope is Scope.GLOBAL,
            pruning_ratio=ratio,
            ignored_layers=ignored,
            round_to=round_to,
        )


def check_something_pruned(module: nn.Module, channels_before: dict[str, int], ignored: dict, round_to) -> None:
    """Any ratio > 0 removes at least one channel per prunable layer; none removed means none was found."""
    if channel_counts(module) != channels_before:
        return
    skipped = ", ".join(ignored) or "none"
    raise PruningError(
        f"no channel of {type(module).__name__} could be removed: Torch-Pruning found no prunable layer outside "
        f"the ignored and output layers ({skipped}). It follows the gradient path from the outputs, so an output "
        "without gradient (argmax, detach, integer ops) hides every layer; return the logits"
        + (f", or lower round_to {round_to}" if round_to else "")
    )


def check_importance_inputs(module: nn.Module, importance: Importance, taylor_batches, round_to) -> None:
    if importance is Importance.TAYLOR and taylor_batches is None:
        raise PruningError(
            "importance 'taylor' needs gradients of the loss: pass taylor_batches (an iterable of "
            "(inputs tuple, labels)), or choose importance l1, l2 or bn_scale"
        )
    if importance is Importance.BN_SCALE and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()
    ):
        raise PruningError(
            f"importance 'bn_scale' ranks channels by BatchNorm scales, but {type(module).__name__} has no "
            "BatchNorm layer; choose importance l1, l2 or taylor"
        )
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PruningError(f"round_to {round_to!r} must be a positive whole number of channels, or None")


def make_importance(importance: Importance):
    import torch_pruning as tp

    return {
        Importance.L1: lambda: tp.importance.GroupMagnitudeImportance(p=1),
        Importance.L2: lambda: tp.importance.GroupMagnitudeImportance(p=2),
        Importance.BN_SCALE: lambda: tp.importance.BNScaleImportance(),
        Importance.TAYLOR: lambda: tp.importance.GroupTaylorImportance(),
    }[importance]()


def named_layers(module: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """{name: module} for the given names from ``named_modules()``; unknown names list the close ones."""
    named = dict(module.named_modules())
    for name in names:
        if name not in named:
            close = closest_names(name, named)
            hint = f"; did you mean {', '.join(map(repr, close))}" if close else ""
            prunable = [n for n, m in named.items() if isinstance(m, PRUNABLE_TYPES)]
            raise PruningError(
                f"ignored layer {name!r} is not a module of the model{hint}. Prunable layers: {', '.join(prunable)}"
            )
    return {name: named[name] for name in names}


def named_layers_of(module: nn.Module, layers: list[nn.Module]) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in module.named_modules() if any(m is layer for layer in layers)]


def build_graph(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]):
    import torch_pruning as tp

    with tracing_errors(module, "tracing"):
        return tp.DependencyGraph().build_dependency(module, example_inputs=example_inputs)


def output_layers(graph) -> list[nn.Module]:
    """Conv/Linear layers whose channels reach a model output without passing another Conv/Linear."""
    return [m for m, node in graph.module2node.items() if isinstance(m, PRUNABLE_TYPES) and reaches_output(node)]


def reaches_output(node) -> bool:
    pending, seen = list(node.outputs), set()
    if not pending:
        return True
    while pending:
        current = pending.pop()
        if id(current) in seen or consumes_channels(current.module):
            continue
        seen.add(id(current))
        if not current.outputs:
            return True
        pending.extend(current.outputs)
    return False


def consumes_channels(layer) -> bool:
    """A layer that mixes its input channels into new ones; a depthwise conv passes them through."""
    if not isinstance(layer, PRUNABLE_TYPES):
        return False
    return not (isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1 and layer.groups == layer.in_channels)


def count_ops_and_params(module: nn.Module, example_inputs) -> tuple[int, int]:
    """(MACs, params) for one forward pass on ``example_inputs``."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, example_inputs)
    return int(macs), int(params)


def channel_counts(module: nn.Module) -> dict[str, int]:
    """{layer: output channels} of every Conv/Linear layer."""
    counts = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            counts[name] = layer.out_features
        elif isinstance(layer, nn.modules.conv._ConvNd):
            counts[name] = layer.out_channels
    return counts


def accumulate_loss_gradients(module: nn.Module, batches: Iterable[TaylorBatch]) -> None:
    """Cross-entropy gradients summed over ``batches``, for the Taylor importance; BN statistics stay as they are."""
    was_training = module.training
    module.eval()
    module.zero_grad(set_to_none=True)
    seen = 0
    for inputs, labels in batches:
        nn.functional.cross_entropy(module(*inputs), labels).backward()
        seen += 1
    module.train(was_training)
    if seen == 0:
        raise PruningError("taylor_batches is empty: give at least one (inputs tuple, labels) batch")


def check_still_runs(module: nn.Module, example_inputs, original: dict[str, torch.Tensor], layers) -> None:
    """Run the pruned model once; if a module breaks on the new shapes, restore the model and name that module."""
    try:
        with torch.no_grad(), tracing_errors(module, "running the pruned", advice=""):
            module(*example_inputs)
    except PruningError as e:
        resize_to_state_dict(module, original)
        module.load_state_dict(original)
        raise PruningError(
            f"{e}. The model was left unpruned. Add the layers whose output channels feed that module to "
            f"ignored_layers (Conv/Linear layers: {', '.join(layers)}), or use unstructured pruning"
        ) from e.__cause__


def step_naming_the_failing_layer(pruner, module: nn.Module, original: dict[str, torch.Tensor]) -> None:
    """Torch-Pruning's dependency graph cannot follow every model's channels (attention heads sliced out of one
    Linear's output, typically): it then fails with an IndexError from deep inside. Restore the model (groups before
    the failing one were already pruned) and name the layer whose group failed, with what to do."""
    try:
        pruner.step()
    except Exception as e:
        resize_to_state_dict(module, original)
        module.load_state_dict(original)
        layer = failing_group_layer(e, module)
        where = f" pruning the channels of {layer!r}" if layer else ""
        raise PruningError(
            f"Torch-Pruning failed{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Its "
            f"dependency graph cannot follow this layer's channels (as with attention heads reshaped out of one "
            f"Linear). The model was left unpruned. Add {layer or 'that layer'!r} and the layers like it to "
            "ignored_layers (in a transformer: all but the MLPs' first Linear, as the attention's qkv and proj, the "
            "embedding and the MLPs' last Linear set the heads and the residual width), or use unstructured pruning"
        ) from e


def failing_group_layer(error: BaseException, module: nn.Module) -> str | None:
    """The layer whose dependency group Torch-Pruning was working on when it failed: the innermost ``group`` of the
    failure's frames (its first item is the layer the group was built from)."""
    group, trace = None, error.__traceback__
    while trace is not None:
        group, trace = trace.tb_frame.f_locals.get("group", group), trace.tb_next
    try:
        target = group[0].dep.target.module
    except (AttributeError, IndexError, TypeError):  # no group in the frames, or another Torch-Pruning's layout
        return None
    return next((name for name, sub in module.named_modules() if sub is target), None)


TRACE_ADVICE = (
    "Torch-Pruning runs the forward on example_inputs: check they fit the model, and that it returns tensors "
    "(or lists, tuples or dicts of tensors); or use unstructured pruning"
)


@contextlib.contextmanager
def tracing_errors(module: nn.Module, doing: str, advice: str = TRACE_ADVICE):
    """Turn any failure inside the model's forward into a PruningError naming the innermost module that ran."""
    active = ActiveModules(module)
    try:
        with active, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except PruningError:
        raise
    except Exception as e:
        first = first_error(e)
        message = str(first).splitlines()[0] if str(first) else ""
        raise PruningError(
            f"Torch-Pruning failed {doing} {type(module).__name__}: error in {active.describe()}: "
            f"{type(first).__name__}: {message}" + (f". {advice}" if advice else "")
        ) from e


def first_error(error: BaseException) -> BaseException:
    """The original failure: when a call fails, Torch-Pruning retries it another way and the retry's error hides it."""
    while error.__context__ is not None:
        error = error.__context__
    return error


class ActiveModules:
    """Forward hooks keeping the stack of modules whose forward is running, to name the one that failed."""

    def __init__(self, module: nn.Module):
        self.module, self.stack, self.failed, self.handles = module, [], None, []

    def __enter__(self):
        for name, sub in self.module.named_modules():
            self.handles.append(sub.register_forward_pre_hook(lambda _m, _i, name=name: self.stack.append(name)))
            self.handles.append(sub.register_forward_hook(self.leave))
        return self

    def leave(self, *_) -> None:  # a forward hook's return value would replace the module's output
        self.stack.pop()

    def __exit__(self, *exc):
        self.failed = self.stack[-1] if self.stack else None
        for handle in self.handles:
            handle.remove()
        self.stack.clear()

    def describe(self) -> str:
        if self.failed is None:
            return "no module's forward (the model's inputs or outputs)"
        layer = dict(self.module.named_modules())[self.failed]
        if self.failed == "":
            return f"the model's own forward ({type(layer).__name__})"
        return f"module {self.failed!r} ({type(layer).__name__})"


def resize_to_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Give ``module``'s parameters, buffers and layer attributes the shapes in ``state_dict`` (a pruned model's).

    A fresh, unpruned instance then accepts ``module.load_state_dict(state_dict)``. State dicts, not pickled
    modules, are what edgepack caches: they load with ``torch.load(weights_only=True)``.
    """
    for prefix, layer in module.named_modules():
        dotted = f"{prefix}." if prefix else ""
        resize_tensors(layer._parameters, dotted, state_dict, as_parameter=True)
        resize_tensors(layer._buffers, dotted, state_dict, as_parameter=False)
        update_layer_attributes(layer)


def resize_tensors(tensors: dict, prefix: str, state_dict: dict[str, torch.Tensor], *, as_parameter: bool) -> None:
    for name, tensor in list(tensors.items()):
        saved = state_dict.get(prefix + name)
        if tensor is None or saved is None or saved.shape == tensor.shape:
            continue
        resized = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
        tensors[name] = nn.Parameter(resized, requires_grad=tensor.requires_grad) if as_parameter else resized


def update_layer_attributes(layer: nn.Module) -> None:
    """Make the layer's size attributes agree with its (resized) weights, as its forward and repr read them."""
    weight = getattr(layer, "weight", None)
    if isinstance(layer, nn.modules.conv._ConvNd):
        update_conv_attributes(layer)
    elif isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = weight.shape
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        layer.num_features = (weight if weight is not None else layer.running_mean).shape[0]
    elif isinstance(layer, nn.LayerNorm) and weight is not None:
        layer.normalized_shape = tuple(weight.shape)
    elif isinstance(layer, nn.GroupNorm) and weight is not None:
        layer.num_channels = weight.shape[0]


def update_conv_attributes(conv: nn.modules.conv._ConvNd) -> None:
    """Depthwise convs stay depthwise (groups follows the channels, same multiplier); other groups are kept."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    first, second = conv.weight.shape[:2]
    if conv.transposed:  # weight (in, out / groups)
        conv.groups = first if depthwise else conv.groups
        conv.in_channels, conv.out_channels = first, second * conv.groups
    else:  # weight (out, in / groups)
        conv.groups = first // (conv.out_channels // conv.groups) if depthwise else conv.groups
        conv.out_channels, conv.in_channels = first, second * conv.groups
