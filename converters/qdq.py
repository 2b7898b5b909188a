"""Write an ONNX QDQ model from edgepack's plan and parameters (never onnxruntime's own calibration).

Weights become int8 initializers with a DequantizeLinear (per output channel, or per tensor); biases int32, scale
input_scale x weight_scale, as both onnxruntime's and TFLite's integer kernels expect, with no zero-point input (it
is optional and 0 for int32: per-channel int32 zeros cost 2% of MobileNetV2's int8 file, and onnxruntime fuses the
same QLinearConv without them; a weight's int8 zero point stays, since without it onnxruntime no longer fuses
Gemm into QGemm); each planned activation T
becomes producer -> T_float -> QuantizeLinear -> DequantizeLinear -> T, so consumers and graph outputs keep
their names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from calibration.params import QuantParams, weight_params
from calibration.plan import QuantPlan, constant_values
from edgepack.artifacts import atomic_path

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
    _quantize_biases(graph, plan, activations, weights)
    _quantize_constants(graph, constants or {})
    for tensor, params in activations.items():
        _insert_qdq(graph, tensor, _onnx_grid(params, unsigned_activations))
    onnx.checker.check_model(quantized)
    return quantized, weights


def _onnx_grid(params: QuantParams, unsigned: bool) -> QuantParams:
    return params.as_unsigned() if unsigned and params.dtype == "int8" and not params.narrow else params


def _quantize_weights(graph: onnx.GraphProto, plan: QuantPlan, per_channel: bool) -> dict[str, QuantParams]:
    initializers = {t.name: t for t in graph.initializer}
    done: dict[str, QuantParams] = {}
    for weight in plan.weights:
        if weight.initializer in done:
            continue
        values = numpy_helper.to_array(initializers[weight.initializer])
        params = weight_params(values, weight.axis if per_channel else None)
        _replace_with_dequantized(graph, weight.initializer, params.quantize(values), params)
        done[weight.initializer] = params
    return done


def _quantize_biases(graph: onnx.GraphProto, plan: QuantPlan, activations: dict[str, QuantParams],
                     weights: dict[str, QuantParams]) -> None:  # fmt: skip
    """A bias shared by several nodes (one cell unrolled over time steps: every step's Gemm reads the same bias) is
    written once per bias scale (input scale x weight scale): nodes whose inputs share a grid share one copy."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    copies: dict[str, list[tuple[np.ndarray, str]]] = {}  # bias initializer -> (scale, name its readers read)
    for bias in plan.biases:
        source = activations.get(bias.activation)
        if source is None or bias.initializer not in values:
            continue  # the input stays float: so does the bias
        shape = values[bias.initializer].shape
        scale = (source.scale * weights[bias.weight].scale).astype(np.float32) * np.ones(shape, np.float32)
        written = copies.setdefault(bias.initializer, [])
        name = next((n for s, n in written if np.array_equal(s, scale)), None)
        if name is None:
            name = bias.initializer if not written else f"{bias.initializer}_scale{len(written)}"
            _write_bias(graph, bias.initializer, name, values[bias.initializer], scale)
            written.append((scale, name))
        _read_bias_as(graph, bias, name)


def _write_bias(graph: onnx.GraphProto, initializer: str, name: str, values: np.ndarray, scale: np.ndarray) -> None:
    """int32 on ``scale`` with no zero-point input, dequantized into ``name``."""
    params = QuantParams(scale, np.zeros(values.shape, np.int64), "int32", axis=0)
    q = np.clip(np.round(values / scale), -(2**31), 2**31 - 1).astype(np.int32)
    if name == initializer:
        _replace_with_dequantized(graph, name, q, params, zero_point=False)
    else:
        _add_dequantized(graph, name, q, params, zero_point=False)


def _read_bias_as(graph: onnx.GraphProto, bias, name: str) -> None:
    """The nodes that read ``bias.initializer`` with ``bias.activation`` as data read ``name`` instead."""
    for node in graph.node:
        if node.op_type != "DequantizeLinear" and node.input and node.input[0] == bias.activation:
            node.input[:] = [name if i == bias.initializer else i for i in node.input]


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
    kept = [t for t in graph.initializer if t.name != name]
    del graph.initializer[:]
    graph.initializer.extend(kept)
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
    else:
        source, target = f"{tensor}_float", tensor
        position = _rename_output(graph, tensor, source) + 1
    quantize = helper.make_node("QuantizeLinear", [source, scale.name, zero_point.name], [f"{tensor}_quantized"],
                                name=f"{tensor}_QuantizeLinear")  # fmt: skip
    dequantize = helper.make_node("DequantizeLinear", [f"{tensor}_quantized", scale.name, zero_point.name],
                                  [target], name=f"{tensor}_DequantizeLinear")  # fmt: skip
    graph.node.insert(position, quantize)
    graph.node.insert(position + 1, dequantize)


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
