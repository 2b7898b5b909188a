"""Write an ONNX QDQ model from edgepack's plan and parameters (never onnxruntime's own calibration).

Weights become int8 initializers with a DequantizeLinear (per output channel, or per tensor); biases int32, scale
input_scale x weight_scale, as both onnxruntime's and TFLite's integer kernels expect, with no zero-point input (it
is optional and 0 for int32: per-channel int32 zeros cost 2% of MobileNetV2's int8 file, and onnxruntime fuses the
same QLinearConv without them; a weight's int8 zero point stays, since without it onnxruntime no longer fuses
Gemm into QGemm); each planned activation T
becomes producer -> T_float -> QuantizeLinear -> DequantizeLinear -> T, so consumers and graph outputs keep
their names; a float graph input X becomes X -> Mul(1 / scale) -> QuantizeLinear(scale 1) -> DequantizeLinear ->
X_dequantized, which rounds exactly as TFLite's QUANTIZE does (``_quantize_as_tflite``).

The integers of weights and biases are decided here once (``quantized_constants``); the TFLite conversion is handed
the same values, so both files hold the same int8 weights and int32 biases, not two roundings of the float ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from edgepack.converters.onnx_info import constant_values
from onnx import helper, numpy_helper, version_converter

from edgepack.core.artifacts import atomic_path
from edgepack.core.quantization import QuantParams, QuantPlan, weight_params

INT16_QDQ_OPSET = 21  # QuantizeLinear/DequantizeLinear take int16 from opset 21


def write_qdq_model(
    model: onnx.ModelProto,
    out_path: Path,
    plan: QuantPlan,
    activations: dict[str, QuantParams],
    *,
    unsigned_activations: bool = True,
    per_channel_weights: bool = True,
    constants: dict[str, QuantParams] | None = None,
) -> dict[str, QuantParams]:
    """Write the QDQ model; returns every weight's parameters (activations' are the caller's ``activations``).

    ``per_channel_weights=False``: one symmetric scale per weight tensor (max|w| / 127), as the TFLite file gets.
    ``constants``: constant operands stored on these grids (``Calibration.constants``), as the TFLite file has them."""
    quantized, weights = build_qdq_model(model, plan, activations, unsigned_activations=unsigned_activations,
                                         per_channel_weights=per_channel_weights, constants=constants)  # fmt: skip
    with atomic_path(Path(out_path)) as tmp:
        onnx.save(quantized, str(tmp))
    return weights


def build_qdq_model(model: onnx.ModelProto, plan: QuantPlan, activations: dict[str, QuantParams], *,
                    unsigned_activations: bool = True, per_channel_weights: bool = True,
                    constants: dict[str, QuantParams] | None = None,
                    ) -> tuple[onnx.ModelProto, dict[str, QuantParams]]:  # fmt: skip
    """The QDQ model in memory (the sensitivity search builds many) and every weight's parameters."""
    int16 = any(p.dtype == "int16" for p in activations.values())
    quantized = with_opset_at_least(model, INT16_QDQ_OPSET if int16 else 0)
    graph = quantized.graph
    weights = _quantize_weights(graph, plan, per_channel_weights)
    for name, (q, params) in weights.items():
        _replace_with_dequantized(graph, name, q, params)
    for copy in _bias_copies(graph, plan, activations, {n: p for n, (_, p) in weights.items()}):
        _write_bias(graph, copy)
    _quantize_constants(graph, constants or {})
    for tensor, params in activations.items():
        _insert_qdq(graph, tensor, _onnx_grid(params, unsigned_activations))
    onnx.checker.check_model(quantized)
    return quantized, {name: params for name, (_, params) in weights.items()}


def quantized_constants(graph: onnx.GraphProto, plan: QuantPlan, activations: dict[str, QuantParams],
                        per_channel_weights: bool = True) -> dict[str, tuple[np.ndarray, QuantParams]]:  # fmt: skip
    """Every planned weight and bias, by initializer: (its integers, their parameters). The one place both files'
    integer constants are decided: the TFLite path hands the converter these values dequantized, so it re-derives
    exactly these integers instead of rounding the float weights its own way. (A bias shared by readers on different
    grids has one copy per grid in the ONNX file; the initializer's own values are those of its first grid.)"""
    weights = _quantize_weights(graph, plan, per_channel_weights)
    biases = _bias_copies(graph, plan, activations, {n: p for n, (_, p) in weights.items()})
    return weights | {c.name: (c.q, c.params) for c in biases if c.name == c.initializer}


def dequantized_constants(graph: onnx.GraphProto, plan: QuantPlan, activations: dict[str, QuantParams],
                          per_channel_weights: bool = True) -> dict[str, np.ndarray]:  # fmt: skip
    """``quantized_constants`` as the float values the TFLite converter rounds back to the same integers."""
    constants = quantized_constants(graph, plan, activations, per_channel_weights)
    return {name: params.dequantize(q) for name, (q, params) in constants.items()}


def _onnx_grid(params: QuantParams, unsigned: bool) -> QuantParams:
    return params.as_unsigned() if unsigned and params.dtype == "int8" and not params.narrow else params


def _quantize_weights(graph: onnx.GraphProto, plan: QuantPlan,
                      per_channel: bool) -> dict[str, tuple[np.ndarray, QuantParams]]:  # fmt: skip
    initializers = {t.name: t for t in graph.initializer}
    done: dict[str, tuple[np.ndarray, QuantParams]] = {}
    for weight in plan.weights:
        if weight.initializer in done:
            continue
        values = numpy_helper.to_array(initializers[weight.initializer])
        params = weight_params(values, weight.axis if per_channel else None)
        done[weight.initializer] = (params.quantize(values), params)
    return done


@dataclass
class BiasCopy:
    """One int32 copy of a bias initializer, on one bias scale, and the planned biases (readers) that read it."""

    initializer: str
    name: str  # the initializer's own name for its first scale; NAME_scaleK for the others
    q: np.ndarray
    params: QuantParams
    readers: list = field(default_factory=list)


def _bias_copies(graph: onnx.GraphProto, plan: QuantPlan, activations: dict[str, QuantParams],
                 weights: dict[str, QuantParams]) -> list[BiasCopy]:  # fmt: skip
    """int32 biases on input scale x weight scale. A bias shared by several nodes (one cell unrolled over time
    steps: every step's Gemm reads the same bias) gets one copy per bias scale: nodes whose inputs share a grid share
    one copy."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    copies: dict[str, list[BiasCopy]] = {}
    for bias in plan.biases:
        source = activations.get(bias.activation)
        if source is None or bias.initializer not in values:
            continue  # the input stays float: so does the bias
        shape = values[bias.initializer].shape
        scale = (source.scale * weights[bias.weight].scale).astype(np.float32) * np.ones(shape, np.float32)
        written = copies.setdefault(bias.initializer, [])
        copy = next((c for c in written if np.array_equal(c.params.scale, scale)), None)
        if copy is None:
            name = bias.initializer if not written else f"{bias.initializer}_scale{len(written)}"
            q = np.clip(np.round(values[bias.initializer] / scale), -(2**31), 2**31 - 1).astype(np.int32)
            copy = BiasCopy(bias.initializer, name, q, QuantParams(scale, np.zeros(shape, np.int64), "int32", axis=0))
            written.append(copy)
        copy.readers.append(bias)
    return [c for written in copies.values() for c in written]


def _write_bias(graph: onnx.GraphProto, copy: BiasCopy) -> None:
    """int32 with no zero-point input, dequantized into ``copy.name``; its readers read that name."""
    if copy.name == copy.initializer:
        _replace_with_dequantized(graph, copy.name, copy.q, copy.params, zero_point=False)
        return
    _add_dequantized(graph, copy.name, copy.q, copy.params, zero_point=False)
    for bias in copy.readers:
        for node in graph.node:
            if node.op_type != "DequantizeLinear" and node.input and node.input[0] == bias.activation:
                node.input[:] = [copy.name if i == bias.initializer else i for i in node.input]


def _quantize_constants(graph: onnx.GraphProto, constants: dict[str, QuantParams]) -> None:
    """Each initializer or Constant-node output in ``constants`` becomes integer + DequantizeLinear (same name)."""
    for name, values in constant_values(graph, set(constants)).items():
        for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] == name]:
            graph.node.remove(node)
        graph.initializer.append(numpy_helper.from_array(values, name))  # replaced just below, as a weight is
        _replace_with_dequantized(graph, name, constants[name].quantize(values), constants[name])


def _replace_with_dequantized(graph: onnx.GraphProto, name: str, q: np.ndarray, params: QuantParams, *,
                              zero_point: bool = True) -> None:  # fmt: skip
    """The initializer ``name`` becomes ``name_quantized`` (integer) + DequantizeLinear producing ``name``;
    ``zero_point=False`` leaves out the optional zero-point input (ONNX reads it as 0)."""
    # Deleted in place (every copy: an export may list one twice): rebuilding the list copies every initializer, per
    # weight (for MobileNetV2, 780 MiB of protobuf copies that the process never gave back).
    for index in reversed([i for i, t in enumerate(graph.initializer) if t.name == name]):
        del graph.initializer[index]
    _add_dequantized(graph, name, q, params, zero_point=zero_point)


def _add_dequantized(graph: onnx.GraphProto, name: str, q: np.ndarray, params: QuantParams, *,
                     zero_point: bool = True) -> None:  # fmt: skip
    """``name_quantized`` (integer) + DequantizeLinear producing ``name``."""
    scale, zero = _param_initializers(name, params, q.dtype)
    graph.initializer.extend([numpy_helper.from_array(q, f"{name}_quantized"), scale] + ([zero] if zero_point else []))
    inputs = [f"{name}_quantized", scale.name] + ([zero.name] if zero_point else [])
    axis = {"axis": params.axis} if params.axis is not None and np.ndim(params.scale) else {}
    node = helper.make_node("DequantizeLinear", inputs, [name], name=f"{name}_DequantizeLinear", **axis)
    graph.node.insert(0, node)


def _param_initializers(name: str, params: QuantParams, dtype) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    scale = numpy_helper.from_array(np.asarray(params.scale, np.float32), f"{name}_scale")
    zero_point = numpy_helper.from_array(np.asarray(params.zero_point).astype(dtype), f"{name}_zero_point")
    return scale, zero_point


def _insert_qdq(graph: onnx.GraphProto, tensor: str, params: QuantParams) -> None:
    """T -> QuantizeLinear -> DequantizeLinear -> consumers. A node output is renamed T_float so consumers and
    graph outputs keep reading T; a graph input keeps its name and its consumers read T_dequantized instead."""
    scale, zero_point = _param_initializers(tensor, params, np.dtype(params.dtype))
    graph.initializer.extend([scale, zero_point])
    if any(i.name == tensor for i in graph.input):
        source, target, position = tensor, f"{tensor}_dequantized", 0
        _rename_inputs(graph, tensor, target)
        nodes = _quantize_as_tflite(graph, source, tensor, scale, zero_point.name)
    else:
        source, target = f"{tensor}_float", tensor
        position = _rename_output(graph, tensor, source) + 1
        nodes = [helper.make_node("QuantizeLinear", [source, scale.name, zero_point.name], [f"{tensor}_quantized"],
                                  name=f"{tensor}_QuantizeLinear")]  # fmt: skip
    nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}_quantized", scale.name, zero_point.name],
                                  [target], name=f"{tensor}_DequantizeLinear"))  # fmt: skip
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def _quantize_as_tflite(graph: onnx.GraphProto, source: str, tensor: str, scale: onnx.TensorProto,
                        zero_point: str) -> list[onnx.NodeProto]:  # fmt: skip
    """A float graph input quantized as TFLite's QUANTIZE (LiteRT's builtin and XNNPACK kernels alike) does it:
    round(x * (1 / scale)), where onnxruntime's QuantizeLinear computes round(x / scale). The two differ on about
    one value in 10^6 (the last bit of the quotient), and in a deep net one input step reaches many output values.
    So: Mul by float32(1 / scale), then a QuantizeLinear with scale 1, which rounds that product as it is; the
    DequantizeLinear keeps the real scale, which is what consumers (and onnxruntime's fused kernels) read."""
    reciprocal = np.float32(1.0) / numpy_helper.to_array(scale).astype(np.float32)
    graph.initializer.extend([numpy_helper.from_array(reciprocal, f"{tensor}_inverse_scale"),
                              numpy_helper.from_array(np.float32(1.0), f"{tensor}_unit_scale")])  # fmt: skip
    scaled = helper.make_node("Mul", [source, f"{tensor}_inverse_scale"], [f"{tensor}_scaled"], name=f"{tensor}_Scale")
    quantize = helper.make_node("QuantizeLinear", [f"{tensor}_scaled", f"{tensor}_unit_scale", zero_point],
                                [f"{tensor}_quantized"], name=f"{tensor}_QuantizeLinear")  # fmt: skip
    return [scaled, quantize]


def _rename_inputs(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _rename_output(graph: onnx.GraphProto, old: str, new: str) -> int:
    """Rename the producer's output; returns the producer's position."""
    for index, node in enumerate(graph.node):
        if old in node.output:
            node.output[:] = [new if name == old else name for name in node.output]
            return index
    raise ValueError(f"no node produces {old!r}")


def with_opset_at_least(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """A copy of ``model`` at default-domain opset ``version`` or above. Raising the number alone is not enough: ops
    whose signature changed in between (ReduceMean's axes became an input at 18) must be rewritten, which
    onnx.version_converter does; tensor names are kept, so the plan still applies."""
    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=version)
    if current >= version:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    return version_converter.convert_version(model, version)
