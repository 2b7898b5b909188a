"""Weight sparsity read back from written ONNX and TFLite files: what actually ships, not what torch held.

A zero in a dense tensor costs as many bytes as any other value, so a pruned file is only smaller once it is
compressed: ``gzip_bytes`` gives that size.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from edgepack.converters.runtime import load_tflite_interpreter

ONNX_WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
TFLITE_WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"}
# Where each TFLite op keeps its weight tensor (TRANSPOSE_CONV's first input is the output shape).
TFLITE_WEIGHT_INPUT = {"TRANSPOSE_CONV": 1}


def layer_sparsity(layer: str, weight: np.ndarray) -> dict:
    """One layer's row; ``shape`` is the stored weight's, so structured pruning shows in it too."""
    return {"layer": layer, "fraction": float(np.mean(weight == 0)), "elements": int(weight.size),
            "shape": list(weight.shape)}  # fmt: skip


def onnx_weight_sparsity(path: Path) -> list[dict]:
    """[{layer, fraction of zero weights, elements, shape}] for each Conv/Gemm/MatMul with a constant weight.

    In a QDQ file the weight is the int8 initializer behind DequantizeLinear. Layers are named by the node.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    rows = []
    for index, node in enumerate(graph.node):
        if node.op_type not in ONNX_WEIGHTED_OPS or len(node.input) < 2:
            continue
        weight = constant_source(node.input[1], initializers, producers)
        if weight is not None:
            rows.append(layer_sparsity(node.name or f"{node.op_type}_{index}", numpy_helper.to_array(weight)))
    return rows


def constant_source(name: str, initializers: dict, producers: dict):
    """The initializer a weight input reads, directly or through DequantizeLinear; None for activations."""
    if name in initializers:
        return initializers[name]
    producer = producers.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear":
        return initializers.get(producer.input[0])
    return None


def tflite_weight_sparsity(path: Path) -> list[dict]:
    """[{layer, fraction of zero weights, elements, shape}] for each conv / fully-connected op of a .tflite file.

    Works for float and integer files (int8 weights are read as stored). Layers are named by the op's output.
    """
    interpreter, _, _ = load_tflite_interpreter(path, default_delegates=False)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    dequantized = {op["outputs"][0]: op["inputs"][0] for op in ops if op["op_name"] == "DEQUANTIZE"}
    rows = []
    for op in ops:
        if op["op_name"] not in TFLITE_WEIGHTED_OPS:
            continue
        weight_index = op["inputs"][TFLITE_WEIGHT_INPUT.get(op["op_name"], 1)]
        # float16 files store fp16 weights behind a DEQUANTIZE op: the stored tensor is the one that ships.
        weight = interpreter.get_tensor(dequantized.get(weight_index, weight_index))
        rows.append(layer_sparsity(tensors[op["outputs"][0]]["name"], weight))
    return rows


def gzip_bytes(path: Path) -> int:
    """Size of the file gzip-compressed at level 9: where the zeros of unstructured pruning pay off."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))
