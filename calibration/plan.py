"""Which tensors of a float ONNX graph get quantized, and how: the one plan both backends follow.

Activations are quantized where TFLite keeps a tensor after its own fusions: a Conv/Gemm/MatMul/Add followed only
by a ReLU-like activation is one op in TFLite, so the point is after the activation. Ops that only move data
(reshape, max pool, ...) must keep their input's grid in TFLite, so their output shares the input's parameters.
Outputs of ops whose TFLite int8 kernels fix the output grid (Softmax, Sigmoid, Tanh) get that fixed grid.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepack.core.kernels import (
    CONSTANT_OPERAND_OPS,
    FIXED_OUTPUT_GRIDS,
    FUSED_ACTIVATIONS,
    FUSING_PRODUCERS,
    SAME_GRID_OPS,
)
from edgepack.core.quantization import INTEGER_RANGES, BiasPlan, QuantParams, QuantPlan, WeightPlan

WEIGHT_INPUTS = {"Conv": 1, "Gemm": 1, "MatMul": 1}
BIAS_INPUTS = {"Conv": 2, "Gemm": 2}


def plan_quantization(model: onnx.ModelProto, skip: set[str] = frozenset()) -> QuantPlan:
    """``skip``: node names to keep in float (mixed precision); their outputs are not quantized."""
    graph = model.graph
    constants = _constant_names(graph)
    float_tensors = _float_tensors(model)
    consumers = _consumers(graph)
    plan = QuantPlan()
    for name in (i.name for i in graph.input):
        if name not in constants and name in float_tensors:
            plan.activations.append(name)
    for node in graph.node:
        if node.name in skip:
            continue
        _plan_outputs(node, plan, consumers, constants, float_tensors)
        _plan_weights(node, plan, graph, constants)
        _plan_constant_operand(node, plan, constants, float_tensors)
    return plan


def _plan_outputs(node, plan: QuantPlan, consumers, constants, float_tensors) -> None:
    for out in node.output:
        if not out or out in constants or out not in float_tensors or _fused_away(node, out, consumers):
            continue
        source = node.input[0] if node.input else None
        if node.op_type in SAME_GRID_OPS and source in plan.quantized_tensors():
            plan.shared[out] = plan.shared.get(source, source)
        elif node.op_type in FIXED_OUTPUT_GRIDS:
            plan.fixed[out] = node.op_type
        else:
            plan.activations.append(out)


def _fused_away(node, out: str, consumers) -> bool:
    users = consumers.get(out, [])
    return node.op_type in FUSING_PRODUCERS and len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS


def _plan_weights(node, plan: QuantPlan, graph: onnx.GraphProto, constants: set[str]) -> None:
    index = WEIGHT_INPUTS.get(node.op_type)
    if index is None or len(node.input) <= index or node.input[index] not in constants:
        return
    weight = node.input[index]
    plan.weights.append(WeightPlan(weight, _output_axis(node), node.name))
    bias_index = BIAS_INPUTS.get(node.op_type)
    if bias_index is not None and len(node.input) > bias_index and node.input[bias_index] in constants:
        plan.biases.append(BiasPlan(node.input[bias_index], node.input[0], weight, node.name))


def _plan_constant_operand(node, plan: QuantPlan, constants: set[str], float_tensors: set[str]) -> None:
    """An Add/Sub/Mul/Div of a float tensor and a constant: TFLite's 16x8 kernels need the constant on an int16
    grid too (the converter leaves it float and fails), so both files read it on the same one (calibration.ptq)."""
    if node.op_type not in CONSTANT_OPERAND_OPS or node.output[0] not in float_tensors:
        return
    operands = [name for name in node.input[:2] if name in constants]
    if len(operands) == 1:
        plan.constants[node.output[0]] = operands[0]


def _output_axis(node) -> int:
    """Conv weights are (M, C/g, kH, kW); Gemm's B is (K, N) unless transB; MatMul's B is (K, N)."""
    if node.op_type == "Conv":
        return 0
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if node.op_type == "Gemm" and trans_b else 1


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _consumers(graph: onnx.GraphProto) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def fixed_output_params(op_type: str, dtype: str) -> QuantParams:
    """Softmax/Sigmoid: int8 scale 1/256 zero point -128; Tanh: 1/128, 0; int16: symmetric 1/32768."""
    low, high = FIXED_OUTPUT_GRIDS[op_type]
    qmin, _ = INTEGER_RANGES[dtype]
    if dtype == "int16" or low < 0:
        return QuantParams(np.float32(max(-low, high) / -qmin), np.int64(0), dtype)
    return QuantParams(np.float32(high / (INTEGER_RANGES[dtype][1] - qmin + 1)), np.int64(qmin), dtype)
