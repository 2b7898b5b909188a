"""If nodes whose condition is a constant (after shape fixing and folding) are replaced by the chosen branch.

Exporters write such Ifs for shape checks (``if x.shape[0] == 1``) and scripted code paths; once shapes are
static, only one branch can run. An If whose condition depends on the data cannot become a static TFLite graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepack.core.errors import UnsupportedOperatorError


def inline_constant_ifs(graph: onnx.GraphProto, constants: dict[str, np.ndarray]) -> bool:
    """Replace each If with a constant condition by its branch's nodes, in place. True if any was replaced."""
    nodes, replaced = [], False
    for node in graph.node:
        if node.op_type == "If" and node.input[0] in constants:
            nodes += branch_nodes(node, constants)
            replaced = True
        else:
            nodes.append(node)
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
    return replaced


def branch_nodes(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """The taken branch's nodes (ONNX forbids a branch to shadow outer names, so they keep theirs), its
    initializers moved into ``constants``, and Identity nodes writing the If's outputs."""
    which = "then_branch" if bool(np.asarray(constants[node.input[0]]).reshape(-1)[0]) else "else_branch"
    branch = next(helper.get_attribute_value(a) for a in node.attribute if a.name == which)
    constants.update({tensor.name: numpy_helper.to_array(tensor) for tensor in branch.initializer})
    outputs = [
        helper.make_node("Identity", [out.name], [target], name=f"{node.name or target}/{which}/{target}")
        for out, target in zip(branch.output, node.output, strict=True)
    ]
    return [*branch.node, *outputs]


def reject_computed_ifs(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        if node.op_type == "If":
            raise UnsupportedOperatorError(
                "If",
                node.name or node.output[0],
                f"its condition {node.input[0]!r} is computed from the input data, so no static TFLite graph "
                "can hold both branches; only Ifs whose condition folds to a constant (e.g. from static shapes) "
                "convert. Export the model with the branch taken (trace instead of script)",
            )
