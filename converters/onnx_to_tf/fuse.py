"""Pattern fusion on the prepared ONNX graph: GELU written out as arithmetic becomes one Gelu node.

The legacy torch exporter (and opsets before 20, which have no Gelu) write ``0.5 * x * (1 + erf(x / sqrt 2))``
or the tanh approximation as 5-9 nodes; TFLite has one GELU builtin (and no ERF at all). Patterns are
expression trees over tensor names: ``"x"`` binds the GELU input, floats match scalar constants, Add and Mul
match in either operand order, and every matched intermediate must feed nothing outside the match.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
from onnx import helper

_COMMUTATIVE = {"Add", "Mul"}


def _products(term) -> list[tuple]:
    """Every way to write x * 0.5 * term as two binary Muls (operand order is handled by the matcher)."""
    return [("Mul", ("Mul", "x", 0.5), term), ("Mul", ("Mul", "x", term), 0.5), ("Mul", ("Mul", term, 0.5), "x")]


_ERF_TERM = [("Add", ("Erf", inner), 1.0) for inner in (("Div", "x", math.sqrt(2)), ("Mul", "x", 1 / math.sqrt(2)))]
_CUBES = [("Pow", "x", 3.0), ("Mul", "x", ("Mul", "x", "x"))]
_TANH_TERM = [
    ("Add", ("Tanh", ("Mul", math.sqrt(2 / math.pi), ("Add", "x", ("Mul", 0.044715, cube)))), 1.0) for cube in _CUBES
]
PATTERNS = {
    "none": [p for term in _ERF_TERM for p in _products(term)],
    "tanh": [p for term in _TANH_TERM for p in _products(term)],
}


class Matcher:
    """Matches expression patterns against the graph, recording the nodes a match covers."""

    def __init__(self, graph: onnx.GraphProto, constants: dict[str, np.ndarray]):
        self.constants = constants
        self.producer = {out: node for node in graph.node for out in node.output}
        self.uses: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for output in graph.output:
            self.uses[output.name] = self.uses.get(output.name, 0) + 1

    def match(self, pattern, name: str, bound: dict) -> list[onnx.NodeProto] | None:
        """The nodes that compute ``name`` as ``pattern`` (binding ``bound['x']``), or None."""
        if pattern == "x":
            if bound.setdefault("x", name) != name:
                return None
            return []
        if isinstance(pattern, float):
            value = self.constants.get(name)
            ok = value is not None and value.size == 1 and np.isclose(float(value.reshape(())), pattern, rtol=1e-4)
            return [] if ok else None
        node = self.producer.get(name)
        if node is None or node.op_type != pattern[0] or len(node.input) != len(pattern) - 1:
            return None
        orders = itertools.permutations(pattern[1:]) if node.op_type in _COMMUTATIVE else [pattern[1:]]
        for operands in orders:
            trial = dict(bound)
            nodes = self.match_operands(operands, node.input, trial)
            if nodes is not None:
                bound.update(trial)
                return [node, *nodes]
        return None

    def match_operands(self, operands, names, bound: dict) -> list[onnx.NodeProto] | None:
        nodes: list[onnx.NodeProto] = []
        for operand, name in zip(operands, names, strict=True):
            found = self.match(operand, name, bound)
            if found is None:
                return None
            nodes += found
        return nodes

    def private(self, nodes: list[onnx.NodeProto]) -> bool:
        """Whether every tensor the match computes (except its result) is used only inside the match."""
        inside: dict[str, int] = {}
        for node in nodes:
            for name in node.input:
                inside[name] = inside.get(name, 0) + 1
        return all(self.uses.get(out, 0) == inside.get(out, 0) for node in nodes[1:] for out in node.output)


def fuse_gelu(graph: onnx.GraphProto, constants: dict[str, np.ndarray]) -> int:
    """Replace written-out GELUs with Gelu nodes in place; returns how many were fused."""
    matcher = Matcher(graph, constants)
    replaced: dict[int, onnx.NodeProto | None] = {}  # id(node) -> its Gelu (for a root) or None (removed)
    for root in [n for n in graph.node if n.op_type == "Mul"]:
        match = find_gelu(matcher, root)
        if match is None or any(id(node) in replaced for node in match[2]):
            continue
        approximate, x, nodes = match
        replaced.update({id(node): None for node in nodes})
        replaced[id(root)] = helper.make_node(
            "Gelu", [x], [root.output[0]], name=root.name or root.output[0], approximate=approximate
        )
    if replaced:
        kept = [replaced.get(id(node), node) for node in graph.node]
        del graph.node[:]
        graph.node.extend(node for node in kept if node is not None)
    return sum(1 for node in replaced.values() if node is not None)


def find_gelu(matcher: Matcher, root: onnx.NodeProto) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """(approximate, input name, matched nodes with the root first) when ``root`` ends a GELU."""
    for approximate, patterns in PATTERNS.items():
        for pattern in patterns:
            bound: dict = {}
            nodes = matcher.match(pattern, root.output[0], bound)
            if nodes is not None and matcher.private(nodes):
                return approximate, bound["x"], nodes
    return None
