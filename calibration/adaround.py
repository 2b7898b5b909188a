"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"), on a float ONNX graph.

Rounding each weight to the nearest integer minimises each weight's own error, not the layer's output error. Per
layer (Conv, Gemm, MatMul with a constant weight), AdaRound learns for every weight whether to round down or up:
w = s x clip(floor(w / s) + h(V), qmin, qmax), h(V) = clip(sigmoid(V) x (zeta - gamma) + gamma, 0, 1), minimising
the output's mean squared error against the float layer on its float input (the float model's activations on the
calibration data) plus lambda x sum(1 - |2h - 1|^beta), with beta annealed from 20 to 2 so h ends at 0 or 1.

The scales stay those of ``weight_params`` (symmetric, max|w| / 127 per output channel): the result is written back
into the float model as the values s x q, with each channel's largest weight kept as it was, so both writers
(ONNX QDQ and TFLite, ``converters.qdq.quantized_constants``) re-derive exactly these integers on the same scales.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from edgepack.calibration.collect import read_tensors
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import QuantPlan, weight_params

ZETA, GAMMA = 1.1, -0.1  # h's stretch: it reaches exactly 0 and 1
LAMBDA = 0.01
BETA_START, BETA_END, WARM_UP = 20.0, 2.0, 0.2  # no rounding pressure in the first 20% of the iterations
LEARNING_RATE = 1e-2
ITERATIONS = 1000  # per layer: Nagel et al. use 10k on GPU; 1000 already ends with every h at 0 or 1 here
MAX_ROWS = 4096  # layer input rows (positions x samples) each layer is optimised on: bounds time and memory


@dataclass
class AdaRounding:
    model: onnx.ModelProto  # a new model whose planned weights sit on their int8 grid, as rounded here
    layers: list[dict] = field(default_factory=list)  # {"node", "mse_nearest", "mse_adaround", "changed"}
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"layers": self.layers, "seconds": round(self.seconds, 2)}


def adaround_model(model: onnx.ModelProto, plan: QuantPlan, dataset: ArrayDataset, *, per_channel: bool = True,
                   iterations: int | None = None, seed: int = 0) -> AdaRounding:  # fmt: skip
    """Learned rounding of every planned weight whose layer torch can run here (Conv 1-D/2-D, Gemm, MatMul)."""
    import torch

    started, iterations = time.perf_counter(), iterations or ITERATIONS
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    nodes = {n.name: n for n in rounded.graph.node}
    layers = [w for w in plan.weights if runnable(nodes[w.node])]
    inputs = _layer_inputs(rounded, {nodes[w.node].input[0]: nodes[w.node].op_type for w in layers}, dataset)
    initializers = {t.name: t for t in rounded.graph.initializer}
    result = AdaRounding(rounded)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: more threads only contend (7x slower with 2 on a loaded 2-core host)
    try:
        for weight in layers:
            _round_layer(weight, nodes, initializers, inputs, per_channel, iterations, result)
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - started
    return result


def _round_layer(weight, nodes, initializers, inputs, per_channel: bool, iterations: int, result: AdaRounding):
    """Learn one layer's rounding and write its weight back onto the grid, in place in ``result.model``."""
    node, tensor = nodes[weight.node], initializers[weight.initializer]
    values = numpy_helper.to_array(tensor)
    params = weight_params(values, weight.axis if per_channel else None)
    q, record = _learn_rounding(_Layer(node), inputs[node.input[0]], values, params, iterations)
    tensor.CopyFrom(numpy_helper.from_array(on_grid(values, q, params), weight.initializer))
    result.layers.append({"node": node.name} | record)


def runnable(node: onnx.NodeProto) -> bool:
    attributes = {a.name: a for a in node.attribute}
    if node.op_type == "Gemm":
        return not attributes.get("transA", onnx.AttributeProto()).i and all(
            attributes[k].f == 1.0 for k in ("alpha", "beta") if k in attributes)  # fmt: skip
    if node.op_type == "Conv":
        return "auto_pad" not in attributes or attributes["auto_pad"].s in (b"", b"NOTSET")
    return node.op_type == "MatMul"


def _layer_inputs(model: onnx.ModelProto, readers: dict[str, str], dataset: ArrayDataset) -> dict[str, np.ndarray]:
    """Each layer input's values from the float model (``readers``: tensor -> the reading op type), the first samples
    holding MAX_ROWS output positions; only those are kept, so memory stays bounded whatever the data's size."""
    found: dict[str, list] = {t: [] for t in readers}
    for batch in read_tensors(model, list(readers), dataset):
        for name, parts in found.items():
            wanted = max(1, MAX_ROWS // _positions(batch.values[name], readers[name]))
            have = sum(len(p) for p in parts)
            if have < wanted:
                parts.append(batch.real(name)[: wanted - have])
    return {name: np.concatenate(parts) for name, parts in found.items()}


def _positions(values: np.ndarray, op_type: str) -> int:
    """Output positions per sample: a Conv's are its spatial ones (N, C, ...), a MatMul's the rows of (N, ..., K)."""
    return int(np.prod(values.shape[2:] if op_type == "Conv" else values.shape[1:-1]))


class _Layer:
    """The node's function of (input, weight) in torch, without its bias: the bias cancels in the output error."""

    def __init__(self, node: onnx.NodeProto):
        self.node = node
        self.attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def __call__(self, x, w):
        import torch.nn.functional as F  # noqa: N812

        if self.node.op_type == "MatMul":
            return x @ w
        if self.node.op_type == "Gemm":
            return x @ (w.T if self.attributes.get("transB", 0) else w)
        spatial = w.dim() - 2
        pads = self.attributes.get("pads", [0] * 2 * spatial)
        # ONNX pads are [begin..., end...]; F.pad wants the last axis first, (begin, end) per axis
        x = F.pad(x, [p for i in reversed(range(spatial)) for p in (pads[i], pads[i + spatial])])
        conv = F.conv1d if spatial == 1 else F.conv2d
        return conv(x, w, stride=self.attributes.get("strides", 1), dilation=self.attributes.get("dilations", 1),
                    groups=self.attributes.get("group", 1))  # fmt: skip


def _learn_rounding(layer: _Layer, inputs: np.ndarray, weights: np.ndarray, params, iterations: int):
    import torch

    x = torch.from_numpy(inputs.astype(np.float32))
    w = torch.from_numpy(weights.astype(np.float32))
    scale = torch.from_numpy(np.asarray(params.scale, np.float32).reshape(_scale_shape(params, weights.ndim)))
    target = layer(x, w).detach()
    floor = torch.floor(w / scale)
    rest = (w / scale - floor).clamp(0.01, 0.99)
    v = torch.log((rest - GAMMA) / (ZETA - rest)).requires_grad_()  # h(v) starts at w / s - floor(w / s)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)

    def soft(h):
        return scale * torch.clamp(floor + h, params.qmin, params.qmax)

    for step in range(iterations):
        h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)
        loss = torch.mean((layer(x, soft(h)) - target) ** 2)
        progress = (step / iterations - WARM_UP) / (1 - WARM_UP)
        if progress >= 0:
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + np.cos(np.pi * progress))
            loss = loss + LAMBDA * torch.sum(1 - torch.abs(2 * h - 1) ** beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = torch.clamp(floor + (v >= 0).float(), params.qmin, params.qmax)
        nearest = torch.from_numpy(params.quantize(weights).astype(np.float32))
        errors = [float(torch.mean((layer(x, scale * q) - target) ** 2)) for q in (nearest, learned)]
    q = learned.numpy().astype(np.int8)
    if errors[1] >= errors[0]:  # never worse than nearest on the data it was fitted on
        q = params.quantize(weights)
    changed = float(np.mean(q != params.quantize(weights)))
    return q, {"mse_nearest": errors[0], "mse_adaround": min(errors), "changed": round(changed, 4)}


def _scale_shape(params, ndim: int) -> list[int]:
    shape = [1] * ndim
    if params.axis is not None:
        shape[params.axis] = -1
    return shape


def on_grid(weights: np.ndarray, q: np.ndarray, params) -> np.ndarray:
    """s x q, except each channel's largest |w|, kept as it was so that weight_params finds the same scale (its
    integer is +-127 either way)."""
    snapped = params.dequantize(q)
    axis = params.axis
    moved = np.moveaxis(weights, axis, 0).reshape(len(np.atleast_1d(params.scale)), -1) if axis is not None else \
        weights.reshape(1, -1)  # fmt: skip
    flat = (np.moveaxis(snapped, axis, 0) if axis is not None else snapped).reshape(moved.shape).copy()
    largest = np.abs(moved).argmax(axis=1)
    rows = np.arange(len(largest))
    flat[rows, largest] = moved[rows, largest]
    flat = flat.reshape(np.moveaxis(weights, axis, 0).shape if axis is not None else weights.shape)
    return (np.moveaxis(flat, 0, axis) if axis is not None else flat).astype(np.float32)
