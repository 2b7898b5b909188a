"""A .tflite file's ops and signature tensors read from its flatbuffer, without creating an interpreter.

An interpreter refuses a file whose custom ops (MediaPipe's Convolution2DTransposeBias, an op TensorFlow had no
builtin for) the installed runtime does not register, yet such a file is a valid model that another build runs:
describing it must not depend on the runtime. Details come out shaped as LiteRT's tensor details, so the sessions'
spec code (converters/runtime.py) reads both alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
TENSOR_DTYPES = {code: name.lower() for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
TENSOR_DTYPES |= {schema.TensorType.FLOAT32: "float32", schema.TensorType.STRING: "object"}


@dataclass
class TFLiteGraph:
    op_counts: dict[str, int]  # builtin op name (CONV_2D), or a custom op's own name, -> count in the main subgraph
    custom_ops: list[str]  # the custom op names the file uses: a runtime must register each to run it
    inputs: dict[str, dict]  # signature key (or tensor name) -> LiteRT-style details: shape, dtype, quantization
    outputs: dict[str, dict]


def is_tflite(data: bytes) -> bool:
    return len(data) >= 8 and schema.Model.ModelBufferHasIdentifier(data, 0)


def read_tflite_graph(data: bytes) -> TFLiteGraph:
    model = schema.Model.GetRootAs(data, 0)
    subgraph = model.Subgraphs(0)
    counts: dict[str, int] = {}
    for i in range(subgraph.OperatorsLength()):
        name = _op_name(model.OperatorCodes(subgraph.Operators(i).OpcodeIndex()))
        counts[name] = counts.get(name, 0) + 1
    custom = sorted({_op_name(c) for c in map(model.OperatorCodes, range(model.OperatorCodesLength())) if _custom(c)})
    inputs, outputs = _signature_tensors(model, subgraph)
    return TFLiteGraph(dict(sorted(counts.items())), custom, inputs, outputs)


def _builtin(code) -> int:
    # Codes past 127 live in BuiltinCode; older files only fill the deprecated int8 field.
    return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())


def _custom(code) -> bool:
    return _builtin(code) == schema.BuiltinOperator.CUSTOM


def _op_name(code) -> str:
    if _custom(code):
        return (code.CustomCode() or b"CUSTOM").decode("utf-8", "replace")
    return BUILTIN_NAMES.get(_builtin(code), f"BUILTIN_{_builtin(code)}")


def _signature_tensors(model, subgraph) -> tuple[dict[str, dict], dict[str, dict]]:
    """By the first signature's keys sorted (as LiteRT's signature runner lists them), else by tensor name in the
    subgraph's order (as the interpreter's input and output details)."""
    if not model.SignatureDefsLength():
        inputs = [subgraph.Tensors(int(i)) for i in subgraph.InputsAsNumpy()]
        outputs = [subgraph.Tensors(int(i)) for i in subgraph.OutputsAsNumpy()]
        return _by_name(inputs), _by_name(outputs)
    signature = model.SignatureDefs(0)
    graph = model.Subgraphs(signature.SubgraphIndex())
    inputs = [signature.Inputs(i) for i in range(signature.InputsLength())]
    outputs = [signature.Outputs(i) for i in range(signature.OutputsLength())]
    return _by_key(graph, inputs), _by_key(graph, outputs)


def _by_name(tensors) -> dict[str, dict]:
    return {t.Name().decode(): _details(t) for t in tensors}


def _by_key(graph, tensor_maps) -> dict[str, dict]:
    keyed = {m.Name().decode(): _details(graph.Tensors(m.TensorIndex())) for m in tensor_maps}
    return dict(sorted(keyed.items()))


def _details(tensor) -> dict:
    quantization = tensor.Quantization()
    scales = quantization.ScaleAsNumpy() if quantization is not None and quantization.ScaleLength() else []
    zeros = quantization.ZeroPointAsNumpy() if quantization is not None and quantization.ZeroPointLength() else []
    return {
        "shape": np.asarray(tensor.ShapeAsNumpy() if tensor.ShapeLength() else [], np.int32),
        "dtype": _dtype(tensor.Type()),
        "quantization_parameters": {"scales": scales, "zero_points": zeros,
                                    "quantized_dimension": quantization.QuantizedDimension() if quantization else 0},
    }  # fmt: skip


def _dtype(code: int) -> np.dtype:
    try:
        return np.dtype(TENSOR_DTYPES.get(code, "object"))
    except TypeError:  # RESOURCE, VARIANT: no numpy type
        return np.dtype(object)


UNRESOLVED_CUSTOM_OP = re.compile(r"unresolved custom op: (\w+)")


def missing_custom_op_message(error: Exception, runtime: str) -> str | None:
    """A clear sentence for LiteRT's 'Encountered unresolved custom op: X', or None for any other load error."""
    found = UNRESOLVED_CUSTOM_OP.search(str(error))
    if found is None:
        return None
    return (
        f"the file uses the custom op {found.group(1)!r}, which {runtime} does not register; run it with a "
        f"TFLite runtime built with that op (the one the file was made for), or rebuild the model without it"
    )
