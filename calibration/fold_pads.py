"""Fold explicit Pad nodes into the Conv or pooling that reads them, before anything is quantized.

TF-trained and "same"-padded models (EfficientNet-Lite, ports of Keras nets) export padding as a Pad node before a
Conv or pool. The plan gives a Pad's output a grid of its own, and onnxruntime's QDQ fusion leaves a
DequantizeLinear -> Pad -> QuantizeLinear chain around it, between QLinearConvs (EfficientNet-Lite0: 17 Pads, 18
DQ/Q pairs, int8 at 0.80x float on one thread). A Pad of zeros before a Conv, or before an AveragePool that counts
padding, computes exactly what the op's own ``pads`` do; so does a Pad of -inf before a MaxPool, whose implicit
padding never wins a maximum. Folded, no quantization point sits on a Pad output; the float function is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

# What each consumer's implicit padding holds: the Pad value it can absorb.
FOLDABLE = {"Conv": "zero", "AveragePool": "zero", "MaxPool": "lowest"}
MAX_CHAIN = 32  # nodes evaluated for one Pad's amounts: an exporter's chain is under 10


@dataclass
class PadFolding:
    model: onnx.ModelProto  # a new model; the input is never changed
    folded: list[str]  # the Pad nodes removed

    def summary(self) -> dict:
        return {"folded_pads": len(self.folded), "nodes": self.folded}


def fold_pads(model: onnx.ModelProto) -> PadFolding:
    folded_model = onnx.ModelProto()
    folded_model.CopyFrom(model)
    graph = folded_model.graph
    outputs = {o.name for o in graph.output}
    folded = []
    constant = _Constants(folded_model)
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        users = [n for n in graph.node if pad.output[0] in n.input]
        amounts = _spatial_pads(constant, pad)
        if (
            amounts is None
            or pad.output[0] in outputs
            or not users
            or not all(_absorbs(u, pad, constant) for u in users)
        ):
            continue
        for user in users:
            _add_pads(user, amounts, pad.input[0])
        graph.node.remove(pad)
        folded.append(pad.name or pad.output[0])
        _drop_unused(graph, pad.input[1:])
    return PadFolding(folded_model, folded)


def _drop_unused(graph: onnx.GraphProto, names) -> None:
    """The folded Pad's amounts and value, and what computed them, where nothing else reads them."""
    pending = [n for n in names if n]
    while pending:
        name = pending.pop()
        if name in {i for n in graph.node for i in n.input} | {o.name for o in graph.output}:
            continue
        for tensor in [t for t in graph.initializer if t.name == name]:
            graph.initializer.remove(tensor)
        for node in [n for n in graph.node if list(n.output) == [name]]:
            graph.node.remove(node)
            pending.extend(i for i in node.input if i)


def _spatial_pads(constant: _Constants, pad: onnx.NodeProto) -> list[int] | None:
    """The Pad's amounts as [begin..., end...] over the spatial axes, when it pads only those (never N or C), by a
    non-negative constant, in constant mode; else None."""
    if _attribute(pad, "mode", b"constant") not in (b"constant", "constant") or len(pad.input) > 3 and pad.input[3]:
        return None  # reflect/edge padding, or an 'axes' input (opset 18): not what a Conv pads with
    pads = _attribute(pad, "pads", None) if len(pad.input) < 2 else constant.value(pad.input[1])
    if pads is None:
        return None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if rank < 3 or any(begin[:2] + end[:2]) or min(pads) < 0:
        return None
    return begin[2:] + end[2:]


def _pad_value(constant: _Constants, pad: onnx.NodeProto) -> float | None:
    if len(pad.input) < 2:
        return float(_attribute(pad, "value", 0.0))
    if len(pad.input) < 3 or not pad.input[2]:
        return 0.0
    value = constant.value(pad.input[2])
    return None if value is None else float(np.asarray(value).reshape(-1)[0])


def _absorbs(user: onnx.NodeProto, pad: onnx.NodeProto, constant: _Constants) -> bool:
    """Whether ``user`` reads the Pad as its data input and its own padding computes the same."""
    kind = FOLDABLE.get(user.op_type)
    if kind is None or user.input[0] != pad.output[0] or pad.output[0] in user.input[1:]:
        return False
    if _attribute(user, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or _attribute(user, "ceil_mode", 0):
        return False  # 'same' auto padding or ceil mode would place the folded padding differently
    value = _pad_value(constant, pad)
    if kind == "lowest":
        return value is not None and value <= float(np.finfo(np.float32).min)
    if user.op_type == "AveragePool" and not _attribute(user, "count_include_pad", 0):
        return False  # its own padding is left out of the mean; a Pad's zeros are counted
    return value == 0.0


def _add_pads(user: onnx.NodeProto, amounts: list[int], source: str) -> None:
    own = _attribute(user, "pads", None) or [0] * len(amounts)
    kept = [a for a in user.attribute if a.name != "pads"]
    del user.attribute[:]
    user.attribute.extend([*kept, helper.make_attribute("pads", [a + b for a, b in zip(own, amounts, strict=True)])])
    user.input[0] = source


class _Constants:
    """Values that depend on constants only. The legacy exporter writes ZeroPad2d's amounts as a chain
    (ConstantOfShape, Concat, Reshape, Slice, Transpose, Cast), which onnx's reference evaluator runs here."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producers = {o: n for n in model.graph.node for o in n.output}

    def value(self, name: str) -> np.ndarray | None:
        chain, pending, needed = [], [name], set()
        while pending:
            tensor = pending.pop()
            if tensor in self.initializers:
                needed.add(tensor)
            elif tensor in self.producers and self.producers[tensor].op_type not in ("Shape", "Size"):
                node = self.producers[tensor]
                if node not in chain:
                    chain.append(node)
                    pending.extend(i for i in node.input if i)
            else:
                return None  # a graph input, or a value of the data flowing through the model
            if len(chain) > MAX_CHAIN:
                return None
        return self._evaluate(chain, [self.initializers[t] for t in needed], name)

    def _evaluate(self, nodes: list[onnx.NodeProto], initializers: list, name: str) -> np.ndarray:
        from onnx.reference import ReferenceEvaluator

        order = {n.output[0]: i for i, n in enumerate(self.model.graph.node)}
        nodes = sorted(nodes, key=lambda n: order[n.output[0]])  # the graph's order is a topological one
        output = helper.make_empty_tensor_value_info(name)
        graph = helper.make_graph(nodes, "constant", [], [output], initializer=initializers)
        return ReferenceEvaluator(helper.make_model(graph, opset_imports=self.model.opset_import)).run(None, {})[0]


def _attribute(node: onnx.NodeProto, name: str, default):
    attribute = next((a for a in node.attribute if a.name == name), None)
    return default if attribute is None else helper.get_attribute_value(attribute)
