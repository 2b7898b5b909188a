"""Walk the prepared ONNX graph and build a tf.function whose signature keys are the ONNX names.

Rank-4 inputs enter channels-last (NHWC); outputs leave in whatever layout they end up in, and the recorded
permutation lets callers transpose back. TF rejects some names as signature keys (``onnx::Conv_0``), so those
are sanitized and the mapping kept.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import onnx
import tensorflow as tf
from edgepack.converters.onnx_to_tf import layout
from edgepack.converters.onnx_to_tf.prepare import PreparedModel, real_inputs
from edgepack.converters.onnx_to_tf.registry import LOWERINGS, Node, Value

from edgepack.core.artifacts import TensorSpec
from edgepack.core.errors import UnsupportedOperatorError

# Ops that work on NCHW/NCW spatial data, and elementwise ops that keep whatever layout they get.
SPATIAL_OPS = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
    "InstanceNormalization", "Resize", "DepthToSpace", "SpaceToDepth",
}  # fmt: skip
PASS_THROUGH_OPS = {
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Cast", "Identity", "Sigmoid", "Tanh", "LeakyRelu", "HardSwish",
    "HardSigmoid", "Concat", "Pad", "Abs", "Neg", "Sqrt", "Exp", "Max", "Min", "Pow", "Dropout",
}  # fmt: skip
_VALID_KEY = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")


@dataclass
class LoweredGraph:
    """A traced TF function plus the TFLite-side description of its inputs and outputs."""

    function: tf.types.experimental.ConcreteFunction
    module: tf.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def lower_to_tf(prepared: PreparedModel, fake_quant: dict[str, tuple[float, float, int]] | None = None) -> LoweredGraph:
    """``fake_quant``: tensor name -> (min, max, bits). Each such tensor passes through TF's fake-quant with that
    range, which the TFLite converter turns into exactly that scale and zero point (the integer path)."""
    check_all_supported(prepared.graph)
    fake_quant = fake_quant or {}
    keys = signature_keys(prepared)
    inputs = [input_spec(prepared, info, keys[info.name]) for info in real_inputs(prepared.graph, prepared.constants)]
    outputs: list[TensorSpec] = []

    def run_graph(*tensors):
        env = {name: Value(c) for name, c in prepared.constants.items()}
        for spec, tensor in zip(inputs, tensors, strict=True):
            env[spec.name] = Value(tensor, layout.normalize_perm(spec.perm_from_onnx))
            apply_fake_quant(env, spec.name, fake_quant)
        dense_only = outputs_feeding_only_dense_layers(prepared)
        uses: dict = {}  # quantized constants seen so far (ops_elementwise.on_constant_grid)
        for node in prepared.graph.node:
            lower_node(node, env, prepared.opset, dense_only, fake_quant, uses)
            for name in node.output:
                apply_fake_quant(env, name, fake_quant)
        outputs[:] = [output_spec(env[out.name], out.name, keys[out.name]) for out in prepared.graph.output]
        return {keys[out.name]: output_tensor(env[out.name]) for out in prepared.graph.output}

    signature = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.tensor_name or s.name) for s in inputs]
    module = tf.Module()
    module.run_graph = tf.function(run_graph, input_signature=signature, autograph=False)
    function = module.run_graph.get_concrete_function()
    return LoweredGraph(function, module, inputs, outputs)


def apply_fake_quant(env: dict[str, Value], name: str, fake_quant: dict[str, tuple[float, float, int]]) -> None:
    """Per-tensor fake-quant keeps what the stored value says of its data: the range is the same whichever axis order
    holds it, and a flattened value keeps its feature order (the dense layer reading it permutes its weights)."""
    if name not in fake_quant or env[name].is_constant:
        return
    low, high, bits = fake_quant[name]
    value = env[name]
    quantized = tf.quantization.fake_quant_with_min_max_vars(value.data, low, high, num_bits=bits, narrow_range=False)
    env[name] = dataclasses.replace(value, data=quantized)


def check_all_supported(graph: onnx.GraphProto) -> None:
    """Fail before tracing, naming the first node nothing can lower."""
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in LOWERINGS:
            op_type = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            raise UnsupportedOperatorError(op_type, node.name or node.output[0], supported=LOWERINGS)


def lower_node(node: onnx.NodeProto, env: dict[str, Value], opset: int, dense_only: set[str] = frozenset(),
               fake_quant: dict | None = None, uses: dict | None = None) -> None:  # fmt: skip
    """``fake_quant``: as lower_to_tf's; ``uses``: one dict for all nodes of the graph (integer_context)."""
    view = Node(
        op_type=node.op_type,
        name=node.name or node.output[0],
        inputs=[env[name] if name else None for name in node.input],
        attrs={a.name: decode_attribute(a) for a in node.attribute},
        output_names=list(node.output),
        opset=opset,
        extra={"feeds_only_dense_layers": node.output[0] in dense_only, **integer_context(node, env, fake_quant, uses)},
    )
    results = LOWERINGS[node.op_type](view)
    results = [results] if isinstance(results, Value) else list(results)
    for name, value in zip(node.output, results, strict=False):
        if name:
            env[name] = value


def integer_context(node: onnx.NodeProto, env: dict[str, Value], fake_quant: dict | None, uses: dict | None) -> dict:
    """What lowerings of an integer graph need besides their inputs: that it is one (LSTM/GRU keep their cells float),
    the grid of each constant input (16x8 kernels read constants on one) and of each output (Concat at 16 bits)."""
    if not fake_quant:
        return {"integer": False}
    constants = {i: fake_quant[n] for i, n in enumerate(node.input) if n in fake_quant and env[n].is_constant}
    outputs = {i: fake_quant[n] for i, n in enumerate(node.output) if n in fake_quant}
    return {"integer": True, "constant_grids": constants, "output_grids": outputs, "constant_uses": uses}


def outputs_feeding_only_dense_layers(prepared: PreparedModel) -> set[str]:
    """Tensors read only as the data input of Gemm (transA=0) or MatMul with constant 2-D weights."""
    graph_outputs = {out.name for out in prepared.graph.output}
    return {
        name
        for name, nodes in readers_of(prepared.graph).items()
        if name not in graph_outputs and all(is_dense_data_input(n, name, prepared.constants) for n in nodes)
    }


def readers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def is_dense_data_input(node: onnx.NodeProto, name: str, constants: dict[str, np.ndarray]) -> bool:
    if node.op_type not in ("Gemm", "MatMul") or list(node.input[:1]) != [name] or node.input[1] not in constants:
        return False
    if node.op_type == "MatMul":
        return constants[node.input[1]].ndim == 2
    return not any(a.name == "transA" and a.i for a in node.attribute)


def decode_attribute(attribute: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


def signature_keys(prepared: PreparedModel) -> dict[str, str]:
    """ONNX input/output name -> TFLite signature key, unique and acceptable to TF."""
    names = [i.name for i in real_inputs(prepared.graph, prepared.constants)]
    names += [o.name for o in prepared.graph.output if o.name not in names]
    keys: dict[str, str] = {}
    for name in names:
        key = name if _VALID_KEY.match(name) else "t_" + re.sub(r"[^A-Za-z0-9_.\-/]", "_", name).strip("_")
        while key in keys.values():
            key += "_"
        keys[name] = key
    return keys


def input_spec(prepared: PreparedModel, info: onnx.ValueInfoProto, key: str) -> TensorSpec:
    shape = prepared.input_shapes[info.name]
    perm = input_perm(prepared.graph, info.name, len(shape))
    return TensorSpec(
        name=info.name,
        shape=shape if perm is None else [shape[p] for p in perm],
        dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)).name,
        layout=layout.layout_name(len(shape), perm),
        perm_from_onnx=list(perm) if perm else None,
        tensor_name=None if key == info.name else key,
    )


def input_perm(graph: onnx.GraphProto, name: str, rank: int) -> tuple[int, ...] | None:
    """Channels-last for inputs that are NCHW/NCW images or signals, so no transpose follows the input.

    Rank-4 inputs are images unless they reach a Transpose and no spatial op (a model written for NHWC input,
    e.g. by tf2onnx, transposes to NCHW itself); rank-3 inputs are signals only when they reach a convolution
    or pool.
    """
    reaches = consumers_reached(graph, name)
    if rank == 4 and (reaches & SPATIAL_OPS or "Transpose" not in reaches):
        return layout.channels_last_perm(4)
    if rank == 3 and reaches & SPATIAL_OPS:
        return layout.channels_last_perm(3)
    return None


def consumers_reached(graph: onnx.GraphProto, name: str) -> set[str]:
    """Op types reachable from ``name`` through layout-agnostic ops (which are included)."""
    consumers = readers_of(graph)
    reached, frontier, seen = set(), [name], {name}
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            reached.add(node.op_type)
            if node.op_type in PASS_THROUGH_OPS:
                frontier += [out for out in node.output if out not in seen]
                seen.update(node.output)
    return reached


def output_layout(value: Value) -> tuple[int, ...] | None:
    """Outputs leave channels-last or in ONNX order; any other permutation is undone at the edge."""
    perm = None if value.is_constant else layout.normalize_perm(value.perm)
    return perm if perm == layout.channels_last_perm(value.rank) else None


def output_spec(value: Value, name: str, key: str) -> TensorSpec:
    perm = output_layout(value)
    return TensorSpec(
        name=name,
        shape=value.onnx_shape if perm is None else [value.onnx_shape[p] for p in perm],
        dtype=np.dtype(value.data.dtype.name if value.is_constant else value.data.dtype.as_numpy_dtype).name,
        layout=layout.layout_name(value.rank, perm),
        perm_from_onnx=list(perm) if perm else None,
        tensor_name=None if key == name else key,
    )


def output_tensor(value: Value):
    # Identity keeps an output that is also an input (or a constant) a distinct TFLite tensor.
    return tf.identity(layout.in_perm(value, output_layout(value)))
