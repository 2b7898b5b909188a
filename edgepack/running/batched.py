"""Many samples per onnxruntime call for the evaluation passes (robustness: the evaluation data six times over).

Exported files fix their batch at 1, and torch's ``x.view(1, -1)`` / ``flatten`` export as a Reshape to a constant
shape that starts with 1, so calibration's free-batch copy alone fails its probe on most of them. Here such a shape
copies its first dimension from the Reshape's input instead (0 with allowzero 0); calibration's reader
(``calibration.collect.model_outputs``) then probes the copy: where it computes, sample for sample, what the file
computes one sample at a time, it runs many a call; otherwise (the 1 was not the batch) one a call, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset


def onnx_outputs_batched(path: Path) -> Callable[[ArrayDataset], dict[str, np.ndarray]]:
    """dataset -> the file's outputs on it (ONNX names, stacked over samples), many samples a call where it can."""
    from edgepack.calibration.collect import model_outputs

    model = reshapes_keep_batch(onnx.load(path))
    return lambda dataset: model_outputs(model, dataset)


def reshapes_keep_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose Reshapes to a constant shape [1, ...] (no 0 in it) keep their input's first dimension."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {t.name: t for t in copy.graph.initializer}
    for node in copy.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        shape = numpy_helper.to_array(initializers[node.input[1]])
        if shape.ndim != 1 or not len(shape) or shape[0] != 1 or (shape == 0).any():
            continue
        name = f"{node.input[1]}_keeps_batch"
        if name not in initializers:
            kept = np.concatenate([[0], shape[1:]]).astype(shape.dtype)
            initializers[name] = numpy_helper.from_array(kept, name)
            copy.graph.initializer.append(initializers[name])
        node.input[1] = name
        for attribute in node.attribute:
            if attribute.name == "allowzero":
                attribute.i = 0  # 0 in the shape: copy the input's dimension
    used = {name for node in copy.graph.node for name in node.input}
    unused = [t for t in copy.graph.initializer if t.name not in used]  # onnxruntime warns about each
    for tensor in unused:
        copy.graph.initializer.remove(tensor)
    return copy
