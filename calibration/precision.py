"""What precision each multiply-accumulate of a quantized file runs at, and what may still carry an integer name.

A MAC node (Conv, Gemm, MatMul) runs integer only when its input, its weight (or second input) and its output all
sit on integer grids: TFLite's converter gives an op with a float input or output float weights and a float kernel,
and onnxruntime runs a QDQ Conv whose input is float as a float Conv. Such a node runs int16 when one of its
activations is int16 (16x8), else int8. The output of a Conv fused with its ReLU is the ReLU's output.

The rule (``MIN_OWN_PRECISION_MACS``): a file named int8 (int16x8) runs at least half of its MACs in int8 (int16);
below that it weighs and runs like a float file, and its name would say otherwise.
"""

from __future__ import annotations

import numpy as np
import onnx
from edgepack.calibration.ptq import Calibration

from edgepack.core.kernels import FUSED_ACTIVATIONS

MAC_OPS = {"Conv", "Gemm", "MatMul"}
MIN_OWN_PRECISION_MACS = 0.5
PRECISIONS = ("int8", "int16", "float")


def node_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """MAC node name -> multiply-accumulates of one inference at ``input_shapes`` (default: the model's own; an
    unknown dimension counts as 1)."""
    shapes = _inferred_shapes(model, input_shapes or {})
    return {node.name: _macs(node, shapes) for node in model.graph.node if node.op_type in MAC_OPS}


def node_precisions(model: onnx.ModelProto, calibration: Calibration) -> dict[str, str]:
    """MAC node name -> "int8", "int16" or "float" in a file written from ``calibration``."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {w.initializer for w in calibration.plan.weights}
    return {node.name: _precision(node, calibration.activations, weights, consumers)
            for node in model.graph.node if node.op_type in MAC_OPS}  # fmt: skip


def mac_fractions(macs: dict[str, int], precisions: dict[str, str]) -> dict:
    """For results.json: total MACs and the fraction in each precision (None without MAC nodes)."""
    total = sum(macs.values())
    fractions = {p: sum(m for n, m in macs.items() if precisions[n] == p) / total if total else None
                 for p in PRECISIONS}  # fmt: skip
    return {"total": total, **{p: None if f is None else round(f, 4) for p, f in fractions.items()}}


def own_precision(activation_dtype: str) -> str:
    """The MAC precision a file's name promises: int8 for int8, int16 for int16x8."""
    return "int16" if activation_dtype == "int16" else "int8"


def carries_its_name(own_share: float | None) -> bool:
    """``own_share``: the fraction of MACs at the file's own precision (None: the model has no MAC node)."""
    return own_share is None or own_share >= MIN_OWN_PRECISION_MACS


def _precision(node, activations: dict, weights: set[str], consumers: dict) -> str:
    output = _output_point(node, activations, consumers)
    second = node.input[1] if len(node.input) > 1 else ""
    operands = [node.input[0], output] + ([] if second in weights else [second])
    if any(t not in activations for t in operands):  # a float operand: the node runs float
        return "float"
    return "int16" if any(activations[t].dtype == "int16" for t in operands) else "int8"


def _output_point(node, activations: dict, consumers: dict) -> str:
    """The node's output, or the output of the ReLU/Clip it is fused with (its output then has no grid)."""
    out = node.output[0]
    users = consumers.get(out, [])
    if out not in activations and len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS:
        return users[0].output[0]
    return out


def _inferred_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, input_shapes.get(value.name, []), strict=False):
            dim.Clear()
            dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(fixed)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim] for v in values}
    return shapes | {t.name: list(t.dims) for t in model.graph.initializer}


def _macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """Conv: every output value sums C/groups x kernel products; Gemm and MatMul: K products per output value."""
    out = int(np.prod(shapes.get(node.output[0], [0])))
    first, second = (shapes.get(name, [1]) for name in node.input[:2])
    if node.op_type == "Conv":
        return out * int(np.prod(second[1:]))
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
    return out * int(first[-2] if node.op_type == "Gemm" and trans_a else first[-1])


def integer_nodes(model: onnx.ModelProto, calibration: Calibration) -> set[str]:
    """The MAC nodes with int8 weights in an integer kernel (int8 or 16x8): where bias correction applies."""
    return {name for name, precision in node_precisions(model, calibration).items() if precision != "float"}
