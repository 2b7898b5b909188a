"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2, the data-driven variant).

Quantizing a layer's weight W to W_q shifts its output by (W_q - W) x, whose mean over the data is not zero: the
rounding errors of a channel do not cancel, and the next layers see a biased input. For every quantized Conv/Gemm
edgepack measures E[(W_q - W) x] per output channel, x being the layer's input in the float model over the
calibration batches, and subtracts it from the float bias (a layer without one gets a zero bias first). W_q is
exactly what the files store (``weight_params`` of the scheme), so both the ONNX and the TFLite file carry the
corrected bias of a layer that keeps int8 weights in them.

A layer that runs float in a file (mixed precision) keeps its float bias there (``only``): the correction undoes
the error of int8 weights, and a float layer given it computes worse than float. A layer kept at 16x8 keeps its int8
weights, and their error, so it keeps the correction. Measured on the bridged outlier net with its first conv kept
high (tests/calibration/test_mixed_precision_files.py), cosine to the float outputs on 64 samples: TFLite file
(that conv float) 0.99990 uncorrected, 0.99954 with every bias corrected, 0.99994 with the float layers' biases
left alone; ONNX file (that conv 16x8) 0.99978 uncorrected, 0.99974 correcting the int8 layers alone, 0.99986
correcting the 16x8 ones too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from edgepack.calibration.attention_masks import FLAG_LIMIT
from edgepack.calibration.plan import plan_quantization
from edgepack.calibration.ptq import Calibration
from onnx import helper, numpy_helper

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import QuantPlan, weight_params

CORRECTABLE = {"Conv", "Gemm"}


@dataclass
class BiasCorrection:
    model: onnx.ModelProto  # a new model; the input is never changed
    corrections: dict[str, np.ndarray]  # node name -> the per-channel amount subtracted from its bias
    float_biases: dict[str, np.ndarray] = field(default_factory=dict)  # bias initializer -> its float value (zeros
    # for a bias correction added)

    def only(self, nodes: set[str]) -> BiasCorrection:
        """The correction of ``nodes`` alone: every other corrected node gets its float bias back (an added bias
        stays, at zero), so the graph and the plan on it are unchanged."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        bias_of = {n.name: n.input[2] for n in model.graph.node if n.name in self.corrections}
        restored = {bias_of[n] for n in self.corrections if n not in nodes}
        for tensor in model.graph.initializer:
            if tensor.name in restored:
                tensor.CopyFrom(numpy_helper.from_array(self.float_biases[tensor.name], tensor.name))
        kept = {n: c for n, c in self.corrections.items() if n in nodes}
        return BiasCorrection(model, kept, self.float_biases)

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
    corrections, float_biases = {}, {}
    for layer in layers:
        corrections[layer.node.name] = errors[layer.error_output]
        name, bias = _subtract_from_bias(corrected.graph, layer.node, errors[layer.error_output])
        float_biases[name] = bias
    onnx.checker.check_model(corrected)
    return BiasCorrection(corrected, corrections, float_biases)


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
    from edgepack.converters.verify import pad_batch

    session = ort.InferenceSession(_with_error_twins(model, layers).SerializeToString(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    names = [layer.error_output for layer in layers]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for batch in dataset.batches(batch_size):
        real = len(next(iter(batch.values())))
        for name, value in zip(names, session.run(names, pad_batch(batch, batch_size)), strict=True):
            per_channel = np.moveaxis(value[:real].astype(np.float64), 1, 0).reshape(value.shape[1], -1)
            # A layer reading flags (an attention mask's -inf or finfo.min) errs by inf, NaN or ~1e36 there: those
            # positions carry no signal to correct, and one of them would decide the whole bias.
            finite = np.abs(per_channel) <= FLAG_LIMIT  # False for NaN too
            sums[name] = sums.get(name, 0.0) + np.where(finite, per_channel, 0.0).sum(axis=1)
            counts[name] = counts.get(name, 0) + finite.sum(axis=1)
    return {name: (sums[name] / np.maximum(counts[name], 1)).astype(np.float32) for name in names}


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


def _subtract_from_bias(graph: onnx.GraphProto, node: onnx.NodeProto, error: np.ndarray) -> tuple[str, np.ndarray]:
    """bias' = bias - E[error] (Gemm's C is multiplied by beta, so C' = C - E[error] / beta); returns the bias
    initializer's name and its float value (zeros where the node had no bias)."""
    initializers = {t.name: t for t in graph.initializer}
    shift = error / _attribute(node, "beta", 1.0) if node.op_type == "Gemm" else error
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(initializers[node.input[2]])
        new_bias = (bias - shift.reshape(bias.shape[-1:])).astype(bias.dtype)
        initializers[node.input[2]].CopyFrom(numpy_helper.from_array(new_bias, node.input[2]))
        return node.input[2], bias
    name = f"{node.name or node.output[0]}_corrected_bias"
    graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
    node.input.extend([""] * (2 - len(node.input)) + [name])
    return name, np.zeros_like(shift, dtype=np.float32)
