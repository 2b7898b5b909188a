"""Per-layer work read from a model file: multiply-accumulates, operand precision, weight and activation bytes.

Only the layers that carry nearly all of a CNN's or MLP's arithmetic are costed: Conv (grouped too), Gemm and
MatMul in ONNX; CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED in TFLite. Other ops are counted by type in
``not_counted``. Bytes are the stored sizes: in an ONNX QDQ model a DequantizeLinear's int8 input is what a
runtime reads, and a QuantizeLinear right after a layer is what it writes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LayerCost:
    name: str
    op: str
    precision: str  # "int8", "fp16" or "fp32": the operands' precision, which sets the cost of a MAC
    macs: int
    weight_bytes: int  # constants read per inference: weights and biases
    activation_bytes: int  # the input activation read and the output written


def precision_of(itemsizes_and_kinds: list[tuple[int, str]]) -> str:
    """int8 when every operand is an 8-bit integer; fp16 when a 2-byte float is among them; else fp32."""
    if all(size == 1 and kind in "iu" for size, kind in itemsizes_and_kinds):
        return "int8"
    return "fp16" if (2, "f") in itemsizes_and_kinds else "fp32"


class OnnxGraph:
    """Shapes, element types, producers and consumers of an ONNX graph after shape inference."""

    QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

    def __init__(self, model):
        import onnx

        graph = onnx.shape_inference.infer_shapes(model).graph
        self.nodes = list(graph.node)
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.types = {info.name: info.type.tensor_type for info in [*graph.value_info, *graph.input, *graph.output]}
        self.producers = {output: node for node in self.nodes for output in node.output}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)

    def stored(self, name: str) -> str:
        """The tensor a runtime really reads: through a DequantizeLinear to its integer input."""
        producer = self.producers.get(name)
        return producer.input[0] if producer is not None and producer.op_type == "DequantizeLinear" else name

    def written(self, name: str) -> str:
        """The tensor a runtime really writes: a lone QuantizeLinear's integer output, else the tensor itself."""
        consumers = self.consumers.get(name, [])
        quantized = len(consumers) == 1 and consumers[0].op_type == "QuantizeLinear"
        return consumers[0].output[0] if quantized else name

    def is_constant(self, name: str) -> bool:
        producer = self.producers.get(name)
        return name in self.initializers or (producer is not None and producer.op_type == "Constant")

    def shape(self, name: str) -> list[int]:
        """Static shape; an unknown or symbolic dimension counts as 1 (batch 1), as the runner feeds it."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        dims = self.types[name].shape.dim if name in self.types else []
        return [dim.dim_value if dim.dim_value > 0 else 1 for dim in dims]

    def dtype(self, name: str):
        from onnx.helper import tensor_dtype_to_np_dtype

        elem_type = self.initializers[name].data_type if name in self.initializers else self.types[name].elem_type
        return tensor_dtype_to_np_dtype(elem_type)

    def nbytes(self, name: str) -> int:
        return math.prod(self.shape(name)) * self.dtype(name).itemsize


def onnx_macs(graph: OnnxGraph, node) -> int:
    outputs = math.prod(graph.shape(node.output[0]))
    if node.op_type == "Conv":  # each output element sums over C/groups input channels x the kernel window
        return outputs * math.prod(graph.shape(graph.stored(node.input[1]))[1:])
    a_shape = graph.shape(node.input[0])
    if node.op_type == "Gemm":
        trans_a = next((attribute.i for attribute in node.attribute if attribute.name == "transA"), 0)
        return outputs * (a_shape[0] if trans_a else a_shape[1])
    return outputs * a_shape[-1]  # MatMul


def onnx_layer(graph: OnnxGraph, node) -> LayerCost:
    stored = {name: graph.stored(name) for name in node.input if name}
    dtypes = [graph.dtype(stored[name]) for name in node.input[:2]]
    constants = [name for name in stored.values() if graph.is_constant(name)]
    inputs = [name for name in stored.values() if not graph.is_constant(name)]
    return LayerCost(
        name=node.name or node.output[0],
        op=node.op_type,
        precision=precision_of([(dtype.itemsize, dtype.kind) for dtype in dtypes]),
        macs=onnx_macs(graph, node),
        weight_bytes=sum(graph.nbytes(name) for name in constants),
        activation_bytes=sum(graph.nbytes(name) for name in inputs) + graph.nbytes(graph.written(node.output[0])),
    )


ONNX_LAYER_OPS = ("Conv", "Gemm", "MatMul")


def onnx_layers(path: Path) -> tuple[list[LayerCost], Counter]:
    import onnx

    graph = OnnxGraph(onnx.load(str(path)))
    layers = [onnx_layer(graph, node) for node in graph.nodes if node.op_type in ONNX_LAYER_OPS]
    skipped = (OnnxGraph.QDQ_OPS, ONNX_LAYER_OPS, ("Constant",))
    return layers, Counter(node.op_type for node in graph.nodes if not any(node.op_type in s for s in skipped))


def tflite_macs(op_name: str, output_shape: list[int], filter_shape: list[int]) -> int:
    outputs = math.prod(output_shape)
    if op_name == "CONV_2D":  # filter [out, height, width, in]
        return outputs * math.prod(filter_shape[1:])
    if op_name == "DEPTHWISE_CONV_2D":  # filter [1, height, width, out]: one channel in per channel out
        return outputs * filter_shape[1] * filter_shape[2]
    return outputs * filter_shape[-1]  # FULLY_CONNECTED: filter [units, in]


TFLITE_LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def tflite_nbytes(tensor: dict) -> int:
    import numpy as np

    return math.prod(int(dim) for dim in tensor["shape"]) * np.dtype(tensor["dtype"]).itemsize


def tflite_layer(op: dict, tensors: dict[int, dict]) -> LayerCost:
    import numpy as np

    data, weights = tensors[op["inputs"][0]], [tensors[i] for i in op["inputs"][1:] if i >= 0]
    output = tensors[op["outputs"][0]]
    dtypes = [np.dtype(data["dtype"]), np.dtype(weights[0]["dtype"])]
    return LayerCost(
        name=output["name"],
        op=op["op_name"],
        precision=precision_of([(dtype.itemsize, dtype.kind) for dtype in dtypes]),
        macs=tflite_macs(op["op_name"], [int(d) for d in output["shape"]], [int(d) for d in weights[0]["shape"]]),
        weight_bytes=sum(tflite_nbytes(tensor) for tensor in weights),
        activation_bytes=tflite_nbytes(data) + tflite_nbytes(output),
    )


def tflite_layers(path: Path) -> tuple[list[LayerCost], Counter]:
    from edgepack.core.interpreters import tflite_interpreter

    # Without the default delegate, so that the op list is the model's own ops, not one XNNPACK node.
    interpreter, _, _ = tflite_interpreter(model_path=str(path), default_delegates=False)
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    layers = [tflite_layer(op, tensors) for op in ops if op["op_name"] in TFLITE_LAYER_OPS]
    return layers, Counter(op["op_name"] for op in ops if op["op_name"] not in TFLITE_LAYER_OPS)
