"""Quantization-aware training that simulates exactly what edgepack's PTQ exports (prepare -> train -> convert).

``prepare_qat`` folds BatchNorm into the convs (as the ONNX exporter does), then places fake-quant at the torch
values equal to the plan's quantized ONNX tensors. The equivalence is found by value, never by name (ONNX names
such as 'getitem_3' or 'view' say nothing reliable about torch's): both graphs run on one example batch and each
plan tensor is matched to the first torch value of the same shape that is allclose to it. Weights and biases are
simulated per forward as ``converters.qdq`` writes them; activation grids are ``calibration.params``'s.

After training, ``QatModel.float_module()`` is the fine-tuned float model to export to ONNX, and
``QatModel.calibration_for(that_onnx)`` maps the trained ranges onto that export's tensor names (by value again),
giving the ``Calibration`` the QDQ and TFLite writers consume. What was trained is what ships.

Binary and ternary weights (``WeightMode``) ship as int8 tensors holding two or three values per channel:
standard TFLite and ONNX runtimes have no binary kernels, so the gain is in packed size (``packed_weight_bytes``)
for runtimes that unpack them, not in speed on those runtimes.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from torch import fx, nn

from edgepack.calibration.plan import fixed_output_params
from edgepack.calibration.ptq import Calibration, activation_parameters
from edgepack.compression.options import QatOptions, WeightMode
from edgepack.compression.qat_matching import match_layers, match_tensors, onnx_producers, run_torch
from edgepack.compression.qat_modules import ActivationQuantizer, QuantizedLayer, packed_weight_bytes
from edgepack.core.errors import StageError, UnsupportedOperatorError
from edgepack.core.quantization import QuantPlan

__all__ = ["QatModel", "QatOptions", "WeightMode", "fold_batch_norm", "packed_weight_bytes", "prepare_qat"]


def prepare_qat(
    module: nn.Module,
    float_onnx: onnx.ModelProto,
    calibration: Calibration,
    example: dict[str, np.ndarray],
    *,
    input_names: list[str],
    learn_ranges: bool = False,
    weight_bits: WeightMode = WeightMode.INT8,
    momentum: float = 0.01,
) -> QatModel:
    """A trainable copy of ``module`` simulating ``calibration``'s scheme; ``module`` itself is not changed.

    ``float_onnx`` is the float export ``calibration`` was computed on; ``example`` one batch in its input layout
    (a few samples make the value matching unambiguous). ``momentum``: weight of a new batch in the observed
    ranges (ignored with ``learn_ranges``).
    """
    graph = fold_batch_norm(module)
    inputs = [torch.from_numpy(np.asarray(example[name])) for name in input_names]
    layers = match_layers(graph, float_onnx, calibration.plan)
    plan = calibration.plan
    points = match_tensors(
        graph, float_onnx, _simulated_tensors(plan) + list(plan.shared), example, inputs, input_names
    )
    shared = {tensor: points.pop(tensor) for tensor in plan.shared}
    options = QatOptions(learn_ranges=learn_ranges, weight_bits=weight_bits, momentum=momentum)
    model = QatModel(graph, calibration, points, layers, inputs, input_names, options)
    _check_shared_grids(model, shared, onnx_producers(float_onnx))
    return model


def fold_batch_norm(module: nn.Module) -> fx.GraphModule:
    """BatchNorm folded into the preceding conv/linear, as the ONNX exporter's optimizer does; a traced copy."""
    from torch.fx.experimental.optimization import fuse

    float_copy = copy.deepcopy(module).eval()
    try:
        return fuse(float_copy)
    except Exception as e:
        raise StageError("qat", f"torch.fx cannot trace {type(module).__name__} to fold its BatchNorm: {e}") from e


def _check_shared_grids(model: QatModel, shared: dict[str, str], producers: dict) -> None:
    """A shared point gets no fake-quant of its own: its torch value must already lie on its source's grid."""
    values = run_torch(model.graph_module, model._example)
    for tensor, node_name in shared.items():
        if node_name in model.quantizers:
            continue  # the same torch value as its source (an identity): fake-quantized there
        params, value = model.calibration.activations[tensor], values[node_name]
        if not np.array_equal(params.fake_quantize(value), value):
            op, node = producers[tensor]
            detail = (
                f"its output {tensor!r} keeps its input's grid in the exported files, but the matching torch "
                f"value {node_name!r} is not on that grid; QAT cannot simulate it, keep the node in float "
                "(skip_nodes) or replace the torch op by the one exported"
            )
            raise UnsupportedOperatorError(op, node, detail)


def _simulated_tensors(plan: QuantPlan) -> list[str]:
    """Where fake-quant goes: calibrated and fixed-grid points. Shared ones reuse a grid their op keeps."""
    return plan.activations + list(plan.fixed)


class QatModel(nn.Module):
    """The folded model with fake-quant inserted; ``forward`` takes the model's inputs positionally."""

    def __init__(
        self,
        graph: fx.GraphModule,
        calibration: Calibration,
        points: dict[str, str],
        layers: dict[str, str],
        example: list[torch.Tensor],
        input_names: list[str],
        options: QatOptions,
    ):
        super().__init__()
        self.calibration, self.points, self.input_names = calibration, points, input_names
        self.weight_mode = WeightMode(options.weight_bits)
        self._float_graph = (copy.deepcopy(graph),)  # a tuple: kept for float_module(), not trained
        self._example = example
        self.quantizers: dict[str, ActivationQuantizer] = {}  # by torch node name; registered in the graph
        for tensor, node_name in points.items():
            self._insert_quantizer(graph, tensor, node_name, options)
        self.layers = {w: self._wrap_layer(graph, w, target) for w, target in layers.items()}
        graph.recompile()
        self.graph_module = graph
        self.eval()  # as prepared it reproduces the PTQ files; call .train() to fine-tune (ranges then move)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.graph_module(*inputs)

    def _insert_quantizer(self, graph: fx.GraphModule, tensor: str, node_name: str, options: QatOptions) -> None:
        if node_name in self.quantizers:
            return  # two planned tensors with one torch value: one fake-quant
        plan, scheme = self.calibration.plan, self.calibration.scheme
        dtype = scheme.activation_dtype
        if tensor in plan.fixed:
            quantizer = ActivationQuantizer(0.0, 0.0, dtype, True, fixed=fixed_output_params(plan.fixed[tensor], dtype))
        else:
            quantizer = ActivationQuantizer(
                *self.calibration.ranges[tensor],
                dtype,
                scheme.symmetric_activations,
                momentum=options.momentum,
                learn_range=options.learn_ranges,
            )
        module_name = f"quantize_{node_name}"
        graph.add_submodule(module_name, quantizer)
        _insert_after(graph, node_name, module_name)
        self.quantizers[node_name] = quantizer

    def _wrap_layer(self, graph: fx.GraphModule, weight: str, target: str) -> QuantizedLayer:
        plan = self.calibration.plan
        bias = next((b for b in plan.biases if b.weight == weight), None)
        source = plan.shared.get(bias.activation, bias.activation) if bias else None
        quantizer = self.quantizers.get(self.points.get(source)) if source else None
        wrapped = QuantizedLayer(graph.get_submodule(target), self.weight_mode, quantizer)
        _set_submodule(graph, target, wrapped)
        return wrapped

    def trained_ranges(self) -> dict[str, tuple[float, float]]:
        """Planned tensor (of the float ONNX given to prepare) -> its current range."""
        plan = self.calibration.plan
        return {t: self.quantizers[self.points[t]].range() for t in plan.activations}

    def export_calibration(self) -> Calibration:
        """The trained ranges under the tensor names of the float ONNX given to ``prepare_qat``."""
        plan, scheme = self.calibration.plan, self.calibration.scheme
        ranges = self.trained_ranges()
        return Calibration(scheme, plan, ranges, activation_parameters(plan, ranges, scheme))

    def float_module(self) -> fx.GraphModule:
        """The folded, fine-tuned float model without fake-quant (binary/ternary: the shaped weights), to export."""
        float_graph = copy.deepcopy(self._float_graph[0])
        layers = self.layers.values()
        for target, layer in zip(_layer_targets(self), layers, strict=True):
            _set_submodule(float_graph, target, layer.exported_layer())
        return float_graph.eval()

    def calibration_for(self, float_onnx: onnx.ModelProto) -> Calibration:
        """The trained ranges mapped onto ``float_onnx``, an export of ``float_module()``, matched by value."""
        from edgepack.calibration.plan import plan_quantization

        scheme = self.calibration.scheme
        plan = plan_quantization(float_onnx, skip=set(scheme.skip_nodes))
        example = {name: t.numpy() for name, t in zip(self.input_names, self._example, strict=True)}
        points = match_tensors(
            self.float_module(), float_onnx, plan.activations, example, self._example, self.input_names
        )
        producers = onnx_producers(float_onnx)
        ranges = {t: self._range_at(t, node, producers) for t, node in points.items()}
        return Calibration(scheme, plan, ranges, activation_parameters(plan, ranges, scheme))

    def _range_at(self, tensor: str, node_name: str, producers: dict) -> tuple[float, float]:
        if node_name not in self.quantizers:
            op, node = producers.get(tensor, ("graph input", tensor))
            raise UnsupportedOperatorError(
                op,
                node,
                f"its output {tensor!r} is a quantized point of this export "
                f"but torch value {node_name!r} had no fake-quant in training; prepare QAT "
                "on the same model and export settings",
            )
        return self.quantizers[node_name].range()


def _layer_targets(model: QatModel) -> list[str]:
    owners = {id(m): name for name, m in model.graph_module.named_modules()}
    return [owners[id(layer)] for layer in model.layers.values()]


def _insert_after(graph: fx.GraphModule, node_name: str, module_name: str) -> None:
    """Every user of ``node_name`` reads the fake-quantized value instead (graph outputs included)."""
    nodes = list(graph.graph.nodes)
    node = next(n for n in nodes if n.name == node_name)
    anchor = [n for n in nodes if n.op == "placeholder"][-1] if node.op == "placeholder" else node
    with graph.graph.inserting_after(anchor):
        quantized = graph.graph.call_module(module_name, (node,))
    node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
