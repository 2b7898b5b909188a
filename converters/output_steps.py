"""The quantization step of each output of an integer model file, so that a difference between two runs of the
same file (host and device, ONNX and TFLite) can be counted in steps of the output's grid.

An integer output's step is its own scale; a float output that a DequantizeLinear (ONNX) or DEQUANTIZE (TFLite)
produces has the scale it is dequantized with; any other output is float and has no step (None).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def output_steps(path: Path | str) -> dict[str, float | None]:
    """{output name as converters.runtime's sessions name it: step or None}; per-channel scales give the largest."""
    path = Path(path)
    return _onnx_output_steps(path) if path.suffix == ".onnx" else _tflite_output_steps(path)


def _onnx_output_steps(path: Path) -> dict[str, float | None]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    producers = {name: node for node in graph.node for name in node.output}
    scales = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    steps = {}
    for output in graph.output:
        node = producers.get(output.name)
        quantizing = node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear")
        scale = scales.get(node.input[1]) if quantizing else None
        steps[output.name] = None if scale is None else float(np.max(scale))
    return steps


def _tflite_output_steps(path: Path) -> dict[str, float | None]:
    from edgepack.converters.runtime import TFLiteSession, load_tflite_interpreter

    # Without delegates, so that the op list shows DEQUANTIZE rather than XNNPACK's DELEGATE node.
    interpreter, _, _ = load_tflite_interpreter(path, default_delegates=False)
    interpreter.allocate_tensors()
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    producers = {index: op for op in interpreter._get_ops_details() for index in op["outputs"]}
    signatures = interpreter._get_full_signature_list()
    by_key = next(iter(signatures.values()))["outputs"] if signatures else {}
    by_key = by_key or {d["name"]: d["index"] for d in interpreter.get_output_details()}
    steps = {}
    for spec in TFLiteSession(path).outputs:
        index = by_key[spec.tensor_name or spec.name]
        op = producers.get(index)
        source = op["inputs"][0] if op is not None and op["op_name"] == "DEQUANTIZE" else index
        scales = tensors[source]["quantization_parameters"]["scales"]
        steps[spec.name] = float(np.max(scales)) if len(scales) else None
    return steps
