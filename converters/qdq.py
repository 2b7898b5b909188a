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

from pathlib import Path

import numpy as np
import onnx
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
) -> dict[str, QuantParams]:
    """Write the QDQ model; returns every weight's parameters (activations' are the caller's ``activations``).

    ``per_channel_weights=False``: one symmetric scale per weight tensor (max|w| / 127), as the TFLite file gets."""
    quantized, weights = build_qdq_model(model, plan, activations, unsigned_activations=unsigned_activations,
                                         per_channel_weights=per_channel_weights)  # fmt: skip
    with atomic_path(Path(out_path)) as tmp:
        onnx.save(quantized, str(tmp))
    return weights


def build_qdq_model(model: onnx.ModelProto, plan: QuantPlan, activations: dict[str, QuantParams], *,
                    unsigned_activations: bool = True,
                    per_channel_weights: bool = True) -> tuple[onnx.ModelProto, dict[str, QuantParams]]:  # fmt: skip
    """The QDQ model in memory (the sensitivity search builds many) and every weight's parameters."""
    int16 = any(p.dtype == "int16" for p in activations.values())
    quantized = with_opset_at_least(model, INT16_QDQ_OPSET if int16 else 0)
    graph = quantized.graph
    constants = quantized_constants(graph, plan, activations, per_channel_weights)
    for name, (q, params) in constants.items():
        _replace_with_dequantized(graph, name, q, params, zero_point=params.dtype != "int32")
    for tensor, params in activations.items():
        _insert_qdq(graph, tensor, _onnx_grid(params, unsigned_activations))
    onnx.checker.check_model(quantized)
    return quantized, {name: params for name, (_, params) in constants.items() if params.dtype != "int32"}


def quantized_constants(graph: onnx.GraphProto, plan: QuantPlan, activations: dict[str, QuantParams],
                        per_channel_weights: bool = True) -> dict[str, tuple[np.ndarray, QuantParams]]:  # fmt: skip
    """Every planned weight and bias: (its integers, their parameters). The one place both files' integer
    constants are decided: the TFLite path hands the converter these values dequantized, so it re-derives exactly
    these integers instead of rounding the float weights its own way."""
    weights = _quantize_weights(graph, plan, per_channel_weights)
    return weights | _quantize_biases(graph, plan, activations, {n: p for n, (_, p) in weights.items()})


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


def _quantize_biases(graph: onnx.GraphProto, plan: QuantPlan, activations: dict[str, QuantParams],
                     weights: dict[str, QuantParams]) -> dict[str, tuple[np.ndarray, QuantParams]]:  # fmt: skip
    initializers = {t.name: t for t in graph.initializer}
    done: dict[str, tuple[np.ndarray, QuantParams]] = {}
    for bias in plan.biases:
        source = activations.get(bias.activation)
        if source is None or bias.initializer not in initializers or bias.initializer in done:
            continue  # the input stays float: so does the bias
        values = numpy_helper.to_array(initializers[bias.initializer])
        scale = (source.scale * weights[bias.weight].scale).astype(np.float32) * np.ones(values.shape, np.float32)
        params = QuantParams(scale, np.zeros(values.shape, np.int64), "int32", axis=0)
        done[bias.initializer] = (np.clip(np.round(values / scale), -(2**31), 2**31 - 1).astype(np.int32), params)
    return done


def _replace_with_dequantized(graph: onnx.GraphProto, name: str, q: np.ndarray, params: QuantParams, *,
                              zero_point: bool = True) -> None:  # fmt: skip
    """The initializer ``name`` becomes ``name_quantized`` (integer) + DequantizeLinear producing ``name``;
    ``zero_point=False`` leaves out the optional zero-point input (ONNX reads it as 0)."""
    kept = [t for t in graph.initializer if t.name != name]
    del graph.initializer[:]
    graph.initializer.extend(kept)
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
