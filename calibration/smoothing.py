"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before calibrating.

Transformers' activations have a few channels far larger than the rest; one int8 grid per tensor spends its levels
on them and rounds the other channels to a few levels. Weights have no such channels and are quantized per output
column anyway. So for each input channel j of the constant-weight MatMul/Gemm layers reading an activation X,
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha): X is divided by s and row j of every weight multiplied by it, which
leaves X @ W unchanged in float and evens out both ranges.

The division is folded into X's producer, so no op is added: a LayerNormalization, or the Mul -> Add of a
LayerNorm exported below opset 17 (its scale and bias divided by s), whose output is read by such layers only. That
is the pre-norm layout (ViT, GPT-style decoders). In a post-norm encoder (BERT, MiniLM) every LayerNorm output is
also the residual branch, which needs X itself, so nothing can be folded there; each skip is recorded with its
reason. (On all-MiniLM-L6-v2 the error comes mostly from the feed-forward output and the residual sum, tensors no
MatMul input smoothing reaches: benchmarks/transformer_int8.py.) A smoothed tensor holds X / s, so the per-layer
SQNR against the unsmoothed parent leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from edgepack.calibration.collect import read_tensors
from edgepack.calibration.plan import _consumers
from onnx import numpy_helper
from pydantic import BaseModel, ConfigDict, Field

from edgepack.core.dataset import ArrayDataset

SHAPE_ONLY_READERS = {"Shape", "Size"}  # read no value: a scaled tensor has the same shape
MIN_RANGE = 1e-5  # a channel never seen (or a zero weight row) keeps s = 1


class SmoothQuant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.5, gt=0, lt=1, description="How much of the activation's range moves into the weights: "
                         "0.5 splits it evenly (the paper's default).")  # fmt: skip


@dataclass
class Smoothing:
    model: onnx.ModelProto  # a new model; the input is never changed
    smoothed: list[dict] = field(default_factory=list)  # {"node", "output", "readers", "spread_before", ...}
    skipped: list[dict] = field(default_factory=list)  # {"node", "reason"}

    def summary(self) -> dict:
        """For results.json."""
        return {"smoothed": self.smoothed, "skipped": self.skipped}


@dataclass
class Site:
    producer: onnx.NodeProto
    parameters: tuple[str, str]  # the producer's per-channel scale and bias, both divided by s
    readers: list[onnx.NodeProto]  # MatMul/Gemm nodes reading the producer's output as their data input


def smooth_quant(model: onnx.ModelProto, dataset: ArrayDataset, alpha: float = 0.5) -> Smoothing:
    """The smoothed copy of ``model``: channel ranges of each foldable site measured on ``dataset``."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    sites, skipped = find_sites(smoothed.graph)
    result = Smoothing(smoothed, skipped=skipped)
    if not sites:
        return result
    activation_ranges = channel_ranges(smoothed, [s.producer.output[0] for s in sites], dataset)
    initializers = {t.name: t for t in smoothed.graph.initializer}
    for site in sites:
        result.smoothed.append(smooth_site(site, activation_ranges[site.producer.output[0]], initializers, alpha))
    return result


def find_sites(graph: onnx.GraphProto) -> tuple[list[Site], list[dict]]:
    """Every per-channel affine producer whose output only feeds constant-weight layers that nothing else reads."""
    consumers, producers = _consumers(graph), {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    sites, skipped = [], []
    for node in graph.node:
        parameters = _affine_parameters(node, producers, shapes, uses)
        if parameters is None:
            continue
        readers = [r for r in consumers.get(node.output[0], []) if r.op_type not in SHAPE_ONLY_READERS]
        reason = _unfoldable(node, parameters, readers, shapes, uses, outputs)
        if reason:
            skipped.append({"node": node.name, "reason": reason})
        else:
            sites.append(Site(node, parameters, readers))
    return sites, skipped


def _affine_parameters(node, producers: dict, shapes: dict, uses: dict) -> tuple[str, str] | None:
    """(scale, bias) of y = x_normalised x scale + bias per last-axis channel: a LayerNormalization over the last
    axis, or the Mul -> Add an exporter writes for a LayerNorm below opset 17; None for anything else."""
    if node.op_type == "LayerNormalization" and len(node.input) == 3:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return (node.input[1], node.input[2]) if axis == -1 else None
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    bias = next((i for i in node.input if len(shapes.get(i, ())) == 1), None)
    scaled = producers.get(next((i for i in node.input if i != bias), ""))
    if bias is None or scaled is None or scaled.op_type != "Mul" or uses.get(scaled.output[0]) != 1:
        return None
    scale = next((i for i in scaled.input if shapes.get(i) == shapes[bias]), None)
    return (scale, bias) if scale is not None else None


def _unfoldable(node, parameters, readers, shapes: dict, uses: dict, outputs: set[str]) -> str | None:
    if not all(len(shapes.get(p, ())) == 1 for p in parameters):
        return "its scale or bias is not a constant vector"
    if any(uses[p] > 1 for p in parameters):
        return "its scale or bias is shared with another node"
    others = sorted({r.op_type for r in readers if not _is_weight_reader(r, node.output[0], shapes)})
    others += ["the graph output"] if node.output[0] in outputs or not readers else []
    if others:
        return f"its output is also read by {others} (a residual branch or an output needs it unscaled)"
    if any(uses[r.input[1]] > 1 for r in readers):
        return "a weight reading it is shared with another layer"
    return None


def _is_weight_reader(node, tensor: str, shapes: dict) -> bool:
    if node.op_type not in ("MatMul", "Gemm") or node.input[0] != tensor or len(shapes.get(node.input[1], ())) != 2:
        return False
    return not any(a.name == "transA" and a.i for a in node.attribute)


def channel_ranges(model: onnx.ModelProto, tensors: list[str], dataset: ArrayDataset) -> dict[str, np.ndarray]:
    """max |x_j| over every sample and position, per last-axis channel j, of each tensor."""
    ranges: dict[str, np.ndarray] = {}
    for batch in read_tensors(model, tensors, dataset):
        for name in tensors:
            values = np.abs(batch.real(name)).reshape(-1, batch.values[name].shape[-1]).max(axis=0)
            ranges[name] = np.maximum(ranges.get(name, values), values)
    return ranges


def smooth_site(site: Site, activation: np.ndarray, initializers: dict, alpha: float) -> dict:
    """Divide the producer's scale and bias by s, multiply the readers' weight rows by s; returns the record."""
    weights = {r.name: _input_rows(r, numpy_helper.to_array(initializers[r.input[1]])) for r in site.readers}
    weight_range = np.max([np.abs(w).max(axis=1) for w in weights.values()], axis=0)
    usable = (activation > MIN_RANGE) & (weight_range > MIN_RANGE)
    scales = np.where(usable, activation**alpha / np.maximum(weight_range, MIN_RANGE) ** (1 - alpha), 1.0)
    scales = scales.astype(np.float32)
    for name in site.parameters:
        _replace(initializers, name, lambda v: v / scales)
    for reader in site.readers:
        _replace(initializers, reader.input[1], lambda v, r=reader: _from_rows(r, _input_rows(r, v) * scales[:, None]))
    after = activation / scales
    return {"node": site.producer.name, "output": site.producer.output[0], "readers": [r.name for r in site.readers],
            "spread_before": _spread(activation), "spread_after": _spread(after)}  # fmt: skip


def _input_rows(node, weight: np.ndarray) -> np.ndarray:
    """The weight as [input channels, output channels]: Gemm with transB stores it the other way round."""
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return weight.T if trans_b else weight


def _from_rows(node, rows: np.ndarray) -> np.ndarray:
    return _input_rows(node, rows)  # transposing back is the same transposition


def _replace(initializers: dict, name: str, change) -> None:
    tensor = initializers[name]
    tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor)).astype(np.float32), name))


def _spread(ranges: np.ndarray) -> float:
    """Largest over median channel range: how much of one per-tensor grid the largest channel takes."""
    return round(float(ranges.max() / max(np.median(ranges), MIN_RANGE)), 2)
