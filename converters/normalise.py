"""One form for ONNX graphs edgepack did not write, made once before quantizing.

Exporters other than torch store weights as Constant nodes and stop at older opsets. The quantization plan, the QDQ
writer and the TFLite lowering must all read the same graph, tensor for tensor: if the writer alone moved weights
or raised the opset, names the plan chose would be gone (onnx's Softmax 12 -> 13 adapter renames the Softmax
output to ``NAME_intermediate``). So the quantize stage normalises first and everything after reads the result:
Constant-node tensors become initializers (same names), and the opset is raised to MIN_QDQ_OPSET, where
DequantizeLinear takes the per-channel ``axis`` attribute.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper, shape_inference, version_converter

from edgepack.core.errors import ModelFileError

MIN_QDQ_OPSET = 13  # DequantizeLinear's per-channel 'axis' exists from opset 13


def normalised_for_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself when it is already in that form, else a normalised copy."""
    if not _constant_nodes(model.graph) and default_opset(model) >= MIN_QDQ_OPSET:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _constants_to_initializers(copy.graph)
    return _raised_opset(copy) if default_opset(copy) < MIN_QDQ_OPSET else copy


def default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=MIN_QDQ_OPSET)


def _constant_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Top-level Constant nodes holding a tensor, except graph outputs (an initializer cannot be one everywhere)."""
    outputs = {o.name for o in graph.output}
    return [n for n in graph.node if n.op_type == "Constant" and n.attribute and n.output[0] not in outputs]


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    for node in _constant_nodes(graph):
        value = helper.get_attribute_value(node.attribute[0])
        tensor = value if isinstance(value, onnx.TensorProto) else _listed_value_tensor(node, value)
        if tensor is None:
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)


def _listed_value_tensor(node: onnx.NodeProto, value) -> onnx.TensorProto | None:
    """value_float(s) / value_int(s) as tensors; a sparse or string value stays a node (nothing quantizes it)."""
    import numpy as np

    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    dtype = kinds.get(node.attribute[0].name)
    return None if dtype is None else numpy_helper.from_array(np.asarray(value, dtype))


def _raised_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes are inferred first: onnx's Softmax adapter keeps a last-axis Softmax one node only when it knows the
    input's rank (otherwise it wraps it in Flatten/Reshape and renames its output)."""
    try:
        return version_converter.convert_version(shape_inference.infer_shapes(model), MIN_QDQ_OPSET)
    except Exception as e:
        raise ModelFileError(
            f"the model is at opset {default_opset(model)} and onnx.version_converter cannot raise it to "
            f"{MIN_QDQ_OPSET}, which per-channel int8 weights need ({e}); re-export it at opset {MIN_QDQ_OPSET} or "
            "later, or convert it to float"
        ) from e
