"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", sec. 4.1) on a float ONNX graph.

For two layers joined through a positive-homogeneous op (ReLU: relu(x / s) = relu(x) / s for s > 0), dividing
output channel i of the first layer (weight and bias) by s_i and multiplying input channel i of the second by
s_i leaves the model's function unchanged. With s_i = sqrt(r1_i * r2_i) / r2_i (r: a channel's max |w|) both
channels end up with the range sqrt(r1_i * r2_i), so one per-tensor scale fits every channel far better. A
depthwise conv between two convs belongs to two pairs, so the scaling is repeated until it stops moving.

ReLU6 (Clip(0, 6)) is not positive-homogeneous: clip(x / s, 0, 6) != clip(x, 0, 6) / s. Nagel replaces it by a
ReLU, which changes the model. edgepack keeps the model's function by scaling the clip with its channel: channel i,
divided by s_i, is clipped at 6 / s_i, since clip(x / s, 0, 6 / s) = clip(x, 0, 6) / s. ONNX's Clip takes scalar
bounds only, so an equalized Clip(0, u) becomes Relu followed by Min with a per-channel constant u / s_i (broadcast
over the channel axis): exact in float in onnxruntime and in the TFLite file (RELU fused into the conv, then
MINIMUM), at the cost of one elementwise op per such pair. Only a Clip whose lower bound is 0 is equalized this way
(a Clip with no upper bound is a ReLU and needs no Min).

HardSwish (x * relu6(x + 3) / 6) is not equalized: the +3 inside does not scale with the channel, so
hardswish(x / s) is no function of hardswish(x) / s, and no per-channel bound can make up for it; such pairs are
skipped and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from edgepack.calibration.plan import _consumers
from onnx import numpy_helper

# Ops y = f(x) with f(x / s) = f(x) / s per channel for s > 0, so a channel scale passes through them unchanged.
POSITIVE_HOMOGENEOUS = {"Relu", "LeakyRelu", "Identity", "Dropout"}
EQUALIZABLE = {"Conv", "Gemm"}


@dataclass
class LayerPair:
    """Two layers whose shared channels are scaled: ``first``'s output channels, ``second``'s input channels."""

    first: onnx.NodeProto
    second: onnx.NodeProto
    through: list[str]  # op types between them
    first_axis: int  # the weight axis of first's output channels
    second_axis: int  # the weight axis of second's input channels
    clips: list[onnx.NodeProto] = field(default_factory=list)  # Clip(0, u) nodes between them: per-channel u / s_i
    scales: np.ndarray | None = None  # the product of every step's scales: first's channel i was divided by it


@dataclass
class PairRecord:
    first: str
    second: str
    through: list[str]
    channels: int
    spread_before: list[float]  # max/min channel range of [first's outputs, second's inputs]
    spread_after: list[float] = field(default_factory=list)
    clips_per_channel: list[str] = field(default_factory=list)  # Clip nodes rewritten as Relu + Min(u / s_i)


@dataclass
class Equalization:
    model: onnx.ModelProto  # a new model; the input is never changed
    pairs: list[PairRecord]
    skipped: list[dict]  # {"node": ..., "reason": ...}: where a chain could not be equalized, and why
    iterations: int
    reason: str | None = None  # why nothing was equalized, when nothing was

    def summary(self) -> dict:
        """For results.json."""
        pairs = [vars(p) for p in self.pairs]
        return {"pairs": len(pairs), "iterations": self.iterations, "equalized": pairs, "skipped": self.skipped,
                "reason": self.reason}  # fmt: skip


def equalization_scales(first_ranges: np.ndarray, second_ranges: np.ndarray) -> np.ndarray:
    """s_i = sqrt(r1_i * r2_i) / r2_i; a channel with a zero range on either side is left alone (s_i = 1)."""
    r1, r2 = np.asarray(first_ranges, np.float64), np.asarray(second_ranges, np.float64)
    usable = (r1 > 0) & (r2 > 0)
    return np.where(usable, np.sqrt(r1 * r2) / np.where(usable, r2, 1.0), 1.0)


def equalize_model(model: onnx.ModelProto, *, max_iterations: int = 100, tolerance: float = 1e-7) -> Equalization:
    """Equalize every Conv/Gemm -> (ReLU-like ops) -> Conv/Gemm pair, repeated until the scales stay within
    ``tolerance`` of 1 (or ``max_iterations``)."""
    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    pairs, skipped = find_pairs(equalized.graph)
    if not pairs:
        reason = "no Conv/Gemm -> ReLU-like -> Conv/Gemm pair with a single consumer and constant weights"
        return Equalization(equalized, [], skipped, 0, reason)
    weights = _WeightStore(equalized.graph)
    records = [_record(pair, weights) for pair in pairs]
    iterations = _iterate(pairs, weights, max_iterations, tolerance)
    for pair, record in zip(pairs, records, strict=True):
        record.spread_after = _spreads(pair, weights)
    weights.write_back()
    for pair, record in zip(pairs, records, strict=True):
        record.clips_per_channel = [_clip_per_channel(equalized.graph, clip, pair, weights) for clip in pair.clips]
    return Equalization(equalized, records, skipped, iterations)


def _iterate(pairs: list[LayerPair], weights: _WeightStore, max_iterations: int, tolerance: float) -> int:
    for iteration in range(1, max_iterations + 1):
        if max(_equalize_pair(pair, weights) for pair in pairs) < tolerance:
            return iteration
    return max_iterations


def find_pairs(graph: onnx.GraphProto) -> tuple[list[LayerPair], list[dict]]:
    consumers = _consumers(graph)
    constants = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    values = _constant_values(graph)
    pairs, skipped = [], []
    for node in graph.node:
        if node.op_type not in EQUALIZABLE or _layout(node, graph, constants, consumers, "output") is None:
            continue
        second, through, reason = _follow_chain(node, consumers, outputs, values)
        second_axis = None if second is None else _layout(second, graph, constants, consumers, "input")
        if second is not None and second_axis is None:
            reason = f"{second.op_type} {second.name!r} has a weight layout that is not equalizable"
        if second_axis is not None:
            first_axis = _layout(node, graph, constants, consumers, "output")
            clips = [user for user in _chain_nodes(node, len(through), consumers) if user.op_type == "Clip"]
            pairs.append(LayerPair(node, second, through, first_axis, second_axis, clips))
        elif reason:
            skipped.append({"node": node.name, "reason": reason})
    return pairs, skipped


def _follow_chain(node, consumers, outputs, constants) -> tuple[onnx.NodeProto | None, list[str], str | None]:
    """From ``node``'s output through single-consumer ReLU-like ops to the next Conv/Gemm; else why not
    (None when the chain simply ends in an op that is not a layer)."""
    tensor, through = node.output[0], []
    while True:
        users = consumers.get(tensor, [])
        if tensor in outputs or len(users) != 1:
            return None, through, None
        user = users[0]
        if user.op_type in EQUALIZABLE and user.input[0] == tensor:
            return user, through, None
        if user.op_type == "Clip":
            if not _scalable_clip(user, constants):
                return None, through, _clip_reason(user, constants)
        elif user.op_type == "HardSwish":
            return None, through, (f"HardSwish {user.name!r}: x * relu6(x + 3) / 6 does not scale with its input "
                                   "(the +3 does not), so no per-channel bound keeps the model exact")  # fmt: skip
        elif user.op_type not in POSITIVE_HOMOGENEOUS:
            return None, through, None
        through.append(user.op_type)
        tensor = user.output[0]


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The constant Clip bounds, from initializers or Constant nodes (exporters write them either way)."""
    bounds = {name for node in graph.node if node.op_type == "Clip" for name in node.input[1:] if name}
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in bounds}
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and node.output[0] in bounds:
            values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _clip_bounds(clip: onnx.NodeProto, constants: dict) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip with constant (or absent) bounds; None when a bound is computed at run time."""
    bounds = []
    for position in (1, 2):
        name = clip.input[position] if len(clip.input) > position else ""
        if name and name not in constants:
            return None
        bounds.append(float(constants[name]) if name else None)
    for attribute in clip.attribute:  # opset < 11 keeps the bounds as attributes
        if attribute.name in ("min", "max"):
            bounds[0 if attribute.name == "min" else 1] = attribute.f
    return bounds[0], bounds[1]


def _scalable_clip(clip, constants) -> bool:
    """Clip(0, u) with u > 0 or none (a ReLU): its upper bound can follow each channel's scale. Not a Clip whose
    upper bound is an attribute (opset < 11): the Min taking its place would need broadcasting (opset >= 8)."""
    bounds = _clip_bounds(clip, constants)
    if bounds is None or bounds[0] != 0.0:
        return False
    return bounds[1] is None or (bounds[1] > 0 and not any(a.name == "max" for a in clip.attribute))


def _clip_reason(clip, constants) -> str:
    bounds = _clip_bounds(clip, constants)
    if bounds is None:
        return f"Clip {clip.name!r} has non-constant bounds: its effect on scaled channels is unknown"
    if bounds[0] == 0.0 and bounds[1] is not None and bounds[1] > 0:
        return f"Clip {clip.name!r} keeps its bounds as attributes (opset < 11): export at opset 11 or later"
    return (
        f"Clip {clip.name!r} with bounds {bounds}: only a lower bound of 0 passes a channel scale (its upper bound "
        "then follows the channel); edgepack keeps the model exact, so the pair is not equalized"
    )


def _chain_nodes(node: onnx.NodeProto, count: int, consumers) -> list[onnx.NodeProto]:
    """The ``count`` single-consumer nodes after ``node`` (the chain ``_follow_chain`` walked)."""
    chain, tensor = [], node.output[0]
    for _ in range(count):
        chain.append(consumers[tensor][0])
        tensor = chain[-1].output[0]
    return chain


def _clip_per_channel(graph: onnx.GraphProto, clip: onnx.NodeProto, pair: LayerPair, weights: _WeightStore) -> str:
    """Clip(x, 0, u) on channels divided by s_i -> Min(Relu(x), u / s_i): ONNX's Clip takes scalar bounds only."""
    upper = _clip_bounds(clip, _constant_values(graph))[1]
    name = clip.name or clip.output[0]
    if upper is None:  # a ReLU written as Clip(0): nothing to scale
        return name
    rank = weights.arrays[pair.first.input[1]].ndim if pair.first.op_type == "Conv" else 2
    bound = (upper / pair.scales).astype(np.float32).reshape([-1] + [1] * (rank - 2))
    relu_out, bound_name = f"{name}_relu_output", f"{name}_per_channel_upper_bound"
    graph.initializer.append(numpy_helper.from_array(bound, bound_name))
    relu = onnx.helper.make_node("Relu", [clip.input[0]], [relu_out], name=f"{name}_relu")
    minimum = onnx.helper.make_node("Min", [relu_out, bound_name], [clip.output[0]], name=f"{name}_per_channel_clip")
    nodes, bounds = list(graph.node), set(clip.input[1:])
    position = nodes.index(clip)
    kept = nodes[:position] + [relu, minimum] + nodes[position + 1 :]
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    unused = bounds - used  # the Clip's bound constants go with it, unless something else reads them
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] not in unused]
    del graph.node[:]
    graph.node.extend(kept)
    for tensor in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(tensor)
    return name


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _layout(node, graph, constants, consumers, side: str) -> int | None:
    """The weight axis holding ``side``'s channels (output of the first layer, input of the second), or None
    when the weight is not a constant used only by this node, or the layout has no such axis."""
    weight = node.input[1] if len(node.input) > 1 else ""
    if weight not in constants or len(consumers.get(weight, [])) != 1:
        return None
    if node.op_type == "Gemm":
        if side == "input" and _attribute(node, "transA", 0):
            return None
        trans_b = _attribute(node, "transB", 0)
        return (0 if trans_b else 1) if side == "output" else (1 if trans_b else 0)
    if side == "output":
        return 0
    group = _attribute(node, "group", 1)
    if group == 1:
        return 1
    shape = next(t.dims for t in graph.initializer if t.name == weight)
    return 0 if shape[1] == 1 and shape[0] == group else None  # depthwise, multiplier 1: channel i -> output i


class _WeightStore:
    """The graph's weights and biases as float64 arrays while scaling; written back once at the end."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.arrays = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
        self.changed: set[str] = set()

    def ranges(self, node: onnx.NodeProto, axis: int) -> np.ndarray:
        weight = self.arrays[node.input[1]]
        return np.abs(weight).max(axis=tuple(i for i in range(weight.ndim) if i != axis))

    def scale(self, node: onnx.NodeProto, axis: int, factors: np.ndarray, with_bias: bool) -> None:
        """Multiply the weight's channels along ``axis`` (and the bias, for output channels) by ``factors``."""
        name = node.input[1]
        shape = [1] * self.arrays[name].ndim
        shape[axis] = -1
        self.arrays[name] = self.arrays[name] * factors.reshape(shape)
        self.changed.add(name)
        bias = node.input[2] if with_bias and len(node.input) > 2 else ""
        if bias:
            self.arrays[bias] = self.arrays[bias] * factors
            self.changed.add(bias)

    def write_back(self) -> None:
        for tensor in self.graph.initializer:
            if tensor.name in self.changed:
                dtype = numpy_helper.to_array(tensor).dtype
                tensor.CopyFrom(numpy_helper.from_array(self.arrays[tensor.name].astype(dtype), tensor.name))


def _equalize_pair(pair: LayerPair, weights: _WeightStore) -> float:
    """One equalization step; returns how far the scales were from 1."""
    scales = equalization_scales(
        weights.ranges(pair.first, pair.first_axis), weights.ranges(pair.second, pair.second_axis)
    )
    weights.scale(pair.first, pair.first_axis, 1.0 / scales, with_bias=True)
    weights.scale(pair.second, pair.second_axis, scales, with_bias=False)
    pair.scales = scales if pair.scales is None else pair.scales * scales
    return float(np.max(np.abs(scales - 1.0)))


def _spreads(pair: LayerPair, weights: _WeightStore) -> list[float]:
    return [
        _spread(weights.ranges(pair.first, pair.first_axis)),
        _spread(weights.ranges(pair.second, pair.second_axis)),
    ]


def _spread(ranges: np.ndarray) -> float:
    positive = ranges[ranges > 0]
    return float(positive.max() / positive.min()) if positive.size else 1.0


def _record(pair: LayerPair, weights: _WeightStore) -> PairRecord:
    channels = len(weights.ranges(pair.first, pair.first_axis))
    return PairRecord(pair.first.name, pair.second.name, list(pair.through), channels, _spreads(pair, weights))
