"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before calibrating.

Transformers' activations have a few channels far larger than the rest; one int8 grid per tensor spends its levels
on them and rounds the other channels to a few levels. Weights have no such channels and are quantized per output
column anyway. So for each input channel j of the constant-weight MatMul/Gemm layers reading an activation X,
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha): X is divided by s and row j of every weight multiplied by it, which
leaves X @ W unchanged in float and evens out both ranges.

The division is folded into X's producer, so no op is added: a LayerNormalization (its scale and bias divided by
s) whose output is read by such layers only. That is the pre-norm layout (ViT, GPT-style decoders). In a post-norm
encoder (BERT, MiniLM) every LayerNorm output is also the residual branch, which needs X itself, so nothing can be
folded there; each skip is recorded with its reason. (On all-MiniLM-L6-v2 the error comes mostly from the
feed-forward output and the residual sum, tensors no MatMul input smoothing reaches: benchmarks/transformer_int8.py.)
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

SMOOTHABLE_PRODUCERS = {"LayerNormalization"}
SHAPE_ONLY_READERS = {"Shape", "Size"}  # read no value: a scaled tensor has the same shape
MIN_RANGE = 1e-5  # a channel never seen (or a zero weight row) keeps s = 1


class SmoothQuant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.5, gt=0, lt=1, description="How much of the activation's range moves into the weights: "
                         "0.5 splits it evenly (the paper's default).")  # fmt: skip


@dataclass
class Smoothing:
    model: onnx.ModelProto  # a new model; the input is never changed
    smoothed: list[dict] = field(default_factory=list)  # {"node", "readers", "spread_before", "spread_after"}
    skipped: list[dict] = field(default_factory=list)  # {"node", "reason"}

    def summary(self) -> dict:
        """For results.json."""
        return {"smoothed": self.smoothed, "skipped": self.skipped}


@dataclass
class Site:
    producer: onnx.NodeProto
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
    """Every smoothable producer whose output only feeds constant-weight layers that nothing else reads."""
    consumers = _consumers(graph)
    weight_readers = {}
    for node in graph.node:
        for name in node.input:
            weight_readers[name] = weight_readers.get(name, 0) + 1
    initializers = {t.name for t in graph.initializer if len(t.dims) == 2 or t.name in _norm_parameters(graph)}
    sites, skipped = [], []
    for node in graph.node:
        if node.op_type not in SMOOTHABLE_PRODUCERS:
            continue
        readers = [r for r in consumers.get(node.output[0], []) if r.op_type not in SHAPE_ONLY_READERS]
        reason = _unfoldable(node, readers, initializers, weight_readers)
        if reason:
            skipped.append({"node": node.name, "reason": reason})
        else:
            sites.append(Site(node, readers))
    return sites, skipped


def _norm_parameters(graph: onnx.GraphProto) -> set[str]:
    return {name for n in graph.node if n.op_type in SMOOTHABLE_PRODUCERS for name in n.input[1:3]}


def _unfoldable(node, readers, initializers: set[str], weight_readers: dict[str, int]) -> str | None:
    if len(node.input) < 3 or not {node.input[1], node.input[2]} <= initializers:
        return "its scale or bias is not a constant"
    if weight_readers[node.input[1]] > 1 or weight_readers[node.input[2]] > 1:
        return "its scale or bias is shared with another node"
    if next((a.i for a in node.attribute if a.name == "axis"), -1) != -1:
        return "it normalises more than the last axis"
    others = sorted({r.op_type for r in readers if not _is_weight_reader(r, node.output[0], initializers)})
    if not readers or others:
        return f"its output is also read by {others or 'the graph output'} (a residual branch needs it unscaled)"
    if any(weight_readers[r.input[1]] > 1 for r in readers):
        return "a weight reading it is shared with another layer"
    return None


def _is_weight_reader(node, tensor: str, initializers: set[str]) -> bool:
    if node.op_type not in ("MatMul", "Gemm") or node.input[0] != tensor or node.input[1] not in initializers:
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
    for index in (1, 2):
        _replace(initializers, site.producer.input[index], lambda v: v / scales)
    for reader in site.readers:
        _replace(initializers, reader.input[1], lambda v, r=reader: _from_rows(r, _input_rows(r, v) * scales[:, None]))
    after = activation / scales
    return {"node": site.producer.name, "readers": [r.name for r in site.readers],
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
