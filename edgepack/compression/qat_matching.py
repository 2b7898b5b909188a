"""Which torch value is which ONNX tensor: matched by value on one example batch, never by name.

The dynamo exporter renames freely ('getitem_3', 'mean', 'view'), so names cannot be trusted; values can. Both
graphs run on the same inputs; an ONNX tensor is the first torch value (graph order) of the same shape that is
allclose to it. Weights are matched the same way and then copied from the ONNX file into torch, so the simulated
weights are bit for bit the ones the exporters quantize.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx

from edgepack.compression.qat_modules import WEIGHTED_LAYERS
from edgepack.core.errors import UnsupportedOperatorError
from edgepack.core.quantization import QuantPlan

# Float differences between torch's and onnxruntime's kernels (summation order) stay far below these.
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4


def same_values(torch_value: np.ndarray, onnx_value: np.ndarray) -> bool:
    if torch_value.shape != onnx_value.shape:
        return False
    scale = max(float(np.abs(onnx_value).max(initial=0.0)), 1e-6)
    return bool(np.allclose(torch_value, onnx_value, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE * scale))


def match_tensors(
    graph: fx.GraphModule,
    model: onnx.ModelProto,
    tensors: list[str],
    example: dict[str, np.ndarray],
    inputs: list[torch.Tensor],
    input_names: list[str],
) -> dict[str, str]:
    """ONNX tensor -> the name of the torch fx node computing the same value."""
    onnx_values = run_onnx(model, tensors, example)
    torch_values = run_torch(graph, inputs)
    placeholders = [name for name in torch_values if name in _placeholder_names(graph)]
    producers = onnx_producers(model)
    points = {}
    for tensor in tensors:
        if tensor in input_names:  # graph inputs pair up by position
            points[tensor] = placeholders[input_names.index(tensor)]
            continue
        found = next((n for n, v in torch_values.items() if same_values(v, onnx_values[tensor])), None)
        if found is None:
            raise _no_match(tensor, onnx_values[tensor], producers)
        points[tensor] = found
    return points


def _no_match(tensor: str, value: np.ndarray, producers: dict) -> UnsupportedOperatorError:
    op, node = producers.get(tensor, ("graph input", tensor))
    detail = (
        f"QAT found no torch value equal to its output {tensor!r} (shape {list(value.shape)}) on the example "
        "batch, so it cannot place that point's fake-quant; QAT needs the torch model that was exported to "
        "this ONNX (same weights, eval mode, BatchNorm after a conv)"
    )
    return UnsupportedOperatorError(op, node, detail)


def onnx_producers(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """tensor -> (op type, node name) of the node producing it."""
    return {out: (node.op_type, node.name) for node in model.graph.node for out in node.output}


def _placeholder_names(graph: fx.GraphModule) -> set[str]:
    return {n.name for n in graph.graph.nodes if n.op == "placeholder"}


class _Recorder(fx.Interpreter):
    def __init__(self, graph: fx.GraphModule):
        super().__init__(graph)
        self.values: dict[str, np.ndarray] = {}

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if isinstance(result, torch.Tensor) and result.is_floating_point():
            # A copy: an in-place op later in the graph (torchvision's ReLU(inplace=True)) would otherwise rewrite
            # this value, so a conv's output would read as its ReLU's and the fake-quant land before the ReLU.
            self.values[node.name] = result.detach().cpu().numpy().copy()
        return result


def run_torch(graph: fx.GraphModule, inputs: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Every floating-point value the fx graph computes, by node name, in graph order."""
    recorder = _Recorder(graph.eval())
    with torch.no_grad():
        recorder.run(*inputs)
    return recorder.values


def run_onnx(model: onnx.ModelProto, tensors: list[str], example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The values of ``tensors`` (graph inputs included) in onnxruntime; a batch-1 model runs sample by sample."""
    import onnxruntime as ort

    from edgepack.calibration.collect import with_outputs

    inputs = {i.name for i in model.graph.input}
    exposed = with_outputs(model, [t for t in tensors if t not in inputs])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(example[i.name]) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    if _fixed_batch_of_one(session):
        count = len(next(iter(feeds.values())))
        parts = [session.run(names, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(count)]
        outputs = [np.concatenate(column) for column in zip(*parts, strict=True)]
    else:
        outputs = session.run(names, feeds)
    return {**feeds, **dict(zip(names, outputs, strict=True))}


def _fixed_batch_of_one(session) -> bool:
    return all(i.shape and i.shape[0] == 1 for i in session.get_inputs())


def match_layers(graph: fx.GraphModule, model: onnx.ModelProto, plan: QuantPlan) -> dict[str, str]:
    """Weight initializer -> target of the torch Conv/Linear holding it; the ONNX values are copied into torch."""
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = {name: m for name, m in graph.named_modules() if isinstance(m, WEIGHTED_LAYERS)}
    producers = {node.name: node.op_type for node in model.graph.node}
    matched: dict[str, str] = {}
    for weight in plan.weights:
        values = initializers[weight.initializer]
        values = values.T if weight.axis == 1 else values  # Gemm/MatMul's B as (K, N): torch holds (N, K)
        target = next(
            (
                n
                for n, m in layers.items()
                if n not in matched.values() and same_values(m.weight.detach().numpy(), values)
            ),
            None,
        )
        if target is None:
            detail = (
                f"QAT found no torch Conv/Linear whose weight equals its weight {weight.initializer!r} "
                f"(shape {list(values.shape)}); QAT simulates weights of nn.Conv1d/2d/3d and nn.Linear only"
            )
            raise UnsupportedOperatorError(producers.get(weight.node, "?"), weight.node, detail)
        _adopt(layers[target], values, _bias_values(plan, weight.initializer, initializers))
        matched[weight.initializer] = target
    return matched


def _bias_values(plan: QuantPlan, weight: str, initializers: dict) -> np.ndarray | None:
    bias = next((b for b in plan.biases if b.weight == weight), None)
    return initializers.get(bias.initializer) if bias else None


def _adopt(layer: torch.nn.Module, weight: np.ndarray, bias: np.ndarray | None) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.array(weight, np.float32)))
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(np.array(bias, np.float32)))
