"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2, the data-driven variant).

Quantizing a layer's weight W to W_q shifts its output by (W_q - W) x, whose mean over the data is not zero: the
rounding errors of a channel do not cancel, and the next layers see a biased input. For every quantized Conv/Gemm
edgepack measures E[(W_q - W) x] per output channel, x being the layer's input in the float model over the
calibration batches, and subtracts it from the float bias (a layer without one gets a zero bias first). W_q is
exactly what the files store (``weight_params`` of the scheme), so both the ONNX and the TFLite file carry the
corrected bias.

The error is measured by running, next to each layer, a twin of it whose weight is W_q - W and that has no bias:
the same padding, strides and groups, in onnxruntime, over the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibration.params import weight_params
from calibration.plan import QuantPlan, plan_quantization
from calibration.ptq import Calibration
from calibration.sources import ArrayDataset

CORRECTABLE = {"Conv", "Gemm"}


@dataclass
class BiasCorrection:
    model: onnx.ModelProto  # a new model; the input is never changed
    corrections: dict[str, np.ndarray]  # node name -> the per-channel amount subtracted from its bias

    def summary(self) -> dict:
        """For results.json: the corrected layers and the largest correction."""
        largest = {n: float(np.max(np.abs(c))) for n, c in self.corrections.items()}
        worst = max(largest, key=largest.get, default=None)
        return {"layers": list(self.corrections), "largest_correction": {"node": worst, "value": largest.get(worst)},
                "max_abs_per_layer": largest}  # fmt: skip


@dataclass
class _Layer:
    node: onnx.NodeProto
    error_output: str  # the twin's output: (W_q - W) x
    weight_error: np.ndarray


def correct_biases(model: onnx.ModelProto, plan: QuantPlan, dataset: ArrayDataset, batch_size: int, *,
                   per_channel_weights: bool = True) -> BiasCorrection:  # fmt: skip
    """Subtract E[(W_q - W) x] from the bias of every Conv/Gemm whose weight ``plan`` quantizes."""
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    layers = _layers(corrected.graph, plan, per_channel_weights)
    if not layers:
        return BiasCorrection(corrected, {})
    errors = _expected_output_errors(corrected, layers, dataset, batch_size)
    corrections = {}
    for layer in layers:
        corrections[layer.node.name] = errors[layer.error_output]
        _subtract_from_bias(corrected.graph, layer.node, errors[layer.error_output])
    onnx.checker.check_model(corrected)
    return BiasCorrection(corrected, corrections)


def with_corrected_model(calibration: Calibration, corrected: onnx.ModelProto) -> Calibration:
    """The same ranges, planned on the corrected model: the plan then also quantizes the biases correction added."""
    return replace(calibration, plan=plan_quantization(corrected, skip=set(calibration.scheme.skip_nodes)))


def quantized_weight(weight: np.ndarray, axis: int, per_channel: bool) -> np.ndarray:
    """W_q as the files store it (dequantized): per output channel along ``axis``, or one scale for the tensor."""
    return weight_params(weight, axis if per_channel else None).fake_quantize(weight)


def _layers(graph: onnx.GraphProto, plan: QuantPlan, per_channel: bool) -> list[_Layer]:
    planned = {(w.node, w.initializer): w.axis for w in plan.weights}
    initializers = {t.name: t for t in graph.initializer}
    layers = []
    for node in graph.node:
        axis = planned.get((node.name, node.input[1] if len(node.input) > 1 else ""))
        if node.op_type not in CORRECTABLE or axis is None or _gemm_bias_unused(node):
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        error = (quantized_weight(weight, axis, per_channel) - weight).astype(np.float32)
        layers.append(_Layer(node, f"{node.output[0]}_weight_quantization_error", error))
    return layers


def _gemm_bias_unused(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gemm" and (_attribute(node, "beta", 1.0) == 0.0 or _attribute(node, "transA", 0) != 0)


def _attribute(node: onnx.NodeProto, name: str, default):
    attribute = next((a for a in node.attribute if a.name == name), None)
    return default if attribute is None else helper.get_attribute_value(attribute)


def _expected_output_errors(model: onnx.ModelProto, layers: list[_Layer], dataset: ArrayDataset,
                           batch_size: int) -> dict[str, np.ndarray]:  # fmt: skip
    """Mean over samples (and positions) of each twin's output, per output channel (axis 1)."""
    import onnxruntime as ort

    from converters.verify import pad_batch

    session = ort.InferenceSession(_with_error_twins(model, layers).SerializeToString(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    names = [layer.error_output for layer in layers]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in dataset.batches(batch_size):
        real = len(next(iter(batch.values())))
        for name, value in zip(names, session.run(names, pad_batch(batch, batch_size)), strict=True):
            per_channel = np.moveaxis(value[:real].astype(np.float64), 1, 0).reshape(value.shape[1], -1)
            sums[name] = sums.get(name, 0.0) + per_channel.sum(axis=1)
            counts[name] = counts.get(name, 0) + per_channel.shape[1]
    return {name: (sums[name] / counts[name]).astype(np.float32) for name in names}


def _with_error_twins(model: onnx.ModelProto, layers: list[_Layer]) -> onnx.ModelProto:
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    graph = augmented.graph
    for layer in layers:
        weight_name = f"{layer.error_output}_weight"
        graph.initializer.append(numpy_helper.from_array(layer.weight_error, weight_name))
        twin = helper.make_node(layer.node.op_type, [layer.node.input[0], weight_name], [layer.error_output],
                                name=f"{layer.node.name}_weight_error")  # fmt: skip
        twin.attribute.extend(a for a in layer.node.attribute if a.name != "beta")
        graph.node.append(twin)
        graph.output.append(helper.make_tensor_value_info(layer.error_output, onnx.TensorProto.FLOAT, None))
    return augmented


def _subtract_from_bias(graph: onnx.GraphProto, node: onnx.NodeProto, error: np.ndarray) -> None:
    """bias' = bias - E[error] (Gemm's C is multiplied by beta, so C' = C - E[error] / beta)."""
    initializers = {t.name: t for t in graph.initializer}
    shift = error / _attribute(node, "beta", 1.0) if node.op_type == "Gemm" else error
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(initializers[node.input[2]])
        new_bias = (bias - shift.reshape(bias.shape[-1:])).astype(bias.dtype)
        initializers[node.input[2]].CopyFrom(numpy_helper.from_array(new_bias, node.input[2]))
        return
    name = f"{node.name or node.output[0]}_corrected_bias"
    graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
    node.input.extend([""] * (2 - len(node.input)) + [name])
