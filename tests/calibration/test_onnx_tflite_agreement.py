"""ONNX int8 and TFLite int8 of one calibration compute the same thing: the same integer weights and biases in both
files, the same input quantization, and, layer by layer, the same integers in onnxruntime and LiteRT (XNNPACK).

A MobileNetV2-style net (inverted residuals, depthwise convs, ReLU6, residual adds, global average pool) built in
code at 64x64. Two things made the files part before: the TFLite converter rounded the float weights and biases
itself (a weight half-way between two integers went the other way), and onnxruntime's QuantizeLinear divides by
the scale where TFLite's QUANTIZE multiplies by its reciprocal (about one input value in 10^6 lands one step
apart). Both are provoked here on purpose: weights on half-way points, inputs where the two roundings differ.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgepack.calibration.agreement import divergence_summary, layer_agreement
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
from edgepack.converters.qdq import dequantized_constants, write_qdq_model
from edgepack.converters.runtime import open_session
from edgepack.converters.verify import predict
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from tests.converters.arch_vision import MobileNetV2
from tests.converters.torch_check import calibrate_batchnorm, export

SIZE = 64
SHAPE = [1, 3, SIZE, SIZE]


def write_both_files(folder, *, tied_weights: bool):
    """(folder, calibration) with int8.onnx and int8.tflite written from one calibration."""
    torch.manual_seed(0)
    module = calibrate_batchnorm(MobileNetV2(width=0.35, classes=10), [8, 3, SIZE, SIZE])
    # Legacy export folds BatchNorm into the conv weights: the ties go on the folded weights the files quantize.
    export(module, folder / "fp32.onnx", (torch.zeros(SHAPE),), ["image"], ["logits"])
    model = onnx.load(str(folder / "fp32.onnx"))
    if tied_weights:
        onnx.save(tie_folded_weights(model), str(folder / "fp32.onnx"))
    rng = np.random.default_rng(0)
    calibration = calibrate(model, ArrayDataset({"image": rng.standard_normal([32, *SHAPE[1:]], np.float32)}),
                            QuantScheme())  # fmt: skip
    write_qdq_model(model, folder / "int8.onnx", calibration.plan, calibration.activations)
    ranges = {t: tuple(float(v) for v in p.representable_range()) for t, p in calibration.activations.items()}
    constants = dequantized_constants(model.graph, calibration.plan, calibration.activations)
    convert_onnx_to_tflite(folder / "fp32.onnx", folder / "int8.tflite", {"image": SHAPE},
                           FakeQuantization(ranges, 8, constants=constants))  # fmt: skip
    return folder, calibration


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_both_files(tmp_path_factory.mktemp("agreement"), tied_weights=False)


@pytest.fixture(scope="module")
def tied_files(tmp_path_factory):
    """Weights on half-way points make many accumulations land on half-way points too: good for the weights'
    integers, but the ADD kernels' different tie rules then part the files far more often than real weights do."""
    return write_both_files(tmp_path_factory.mktemp("tied"), tied_weights=True)


def tie_folded_weights(model: onnx.ModelProto, every: int = 7) -> onnx.ModelProto:
    """Every ``every``-th weight of each conv moved onto a point half-way between two of its channel's int8 steps
    (max|w| / 127 per output channel): ties, which two roundings may settle differently."""
    convs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for tensor in model.graph.initializer:
        if tensor.name in convs:
            weights = numpy_helper.to_array(tensor).copy()
            flat = weights.reshape(weights.shape[0], -1)
            steps = np.abs(flat).max(axis=1, keepdims=True) / np.float32(127)
            flat[:, ::every] = np.clip(
                (np.floor(flat[:, ::every] / steps) + 0.5) * steps, -126.5 * steps, 126.5 * steps
            )
            tensor.CopyFrom(numpy_helper.from_array(flat.reshape(weights.shape).astype(np.float32), tensor.name))
    return model


def tie_inputs(calibration, count: int, seed: int = 1) -> np.ndarray:
    """Inputs where x / scale and x * (1 / scale) round to different integers at many pixels, the rest normal."""
    params = calibration.activations["image"]
    scale = np.float32(params.scale)
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal([count, *SHAPE[1:]]).astype(np.float32)
    candidates = ((np.arange(-100, 100) + 0.5) * scale).astype(np.float32)
    candidates = np.concatenate([np.nextafter(candidates, np.float32(s)) for s in (-np.inf, np.inf)] + [candidates])
    apart = candidates[np.round(candidates / scale) != np.round(candidates * (np.float32(1) / scale))]
    assert apart.size >= 4  # the two roundings really differ on these
    flat = inputs.reshape(count, -1)
    flat[:, ::97] = rng.choice(apart, flat[:, ::97].shape)
    return inputs


def integer_constants_of_onnx(path) -> dict[str, np.ndarray]:
    """Initializer name -> the int8 weights / int32 biases the QDQ file holds, keyed by the float name."""
    initializers = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    return {k.removesuffix("_quantized"): v for k, v in initializers.items() if k.endswith("_quantized")}


def integer_constants_of_tflite(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(per-channel scales, integers) of every int8 / int32 constant of the .tflite."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    found = []
    for detail in interpreter.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        if detail["dtype"] in (np.int8, np.int32) and len(scales) > 1:
            found.append((scales.astype(np.float32), interpreter.get_tensor(detail["index"])))
    return found


def in_onnx_layout(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A TFLite conv filter [O, kh, kw, I] or depthwise filter [1, kh, kw, C] in ONNX's [O, I, kh, kw]."""
    if values.ndim != 4:
        return values.reshape(like.shape)
    return values[0].transpose(2, 0, 1)[:, None] if like.shape[1] == 1 else values.transpose(0, 3, 1, 2)


def test_weights_and_biases_are_the_same_integers_on_the_same_scales_in_both_files(tied_files):
    folder, calibration = tied_files
    onnx_constants = integer_constants_of_onnx(folder / "int8.onnx")
    tflite_constants = integer_constants_of_tflite(folder / "int8.tflite")
    initializers = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(folder / "int8.onnx")).graph.initializer}
    compared = {"int8": 0, "int32": 0}
    for name, q in onnx_constants.items():
        if q.dtype not in (np.int8, np.int32) or initializers[f"{name}_scale"].size < 2:
            continue
        scales = initializers[f"{name}_scale"]
        same_grid = [v for s, v in tflite_constants if s.shape == scales.shape and np.allclose(s, scales, rtol=1e-6)]
        assert same_grid, f"{name}: no TFLite constant on its scales"
        assert any(np.array_equal(in_onnx_layout(v, q), q) for v in same_grid), f"{name}: integers differ"
        if q.dtype == np.int8:  # weight scales are the same float32 numbers, not merely close
            assert any(np.array_equal(s, scales) for s, v in tflite_constants if v.size == q.size)
        compared[q.dtype.name] += 1
    assert compared == {"int8": len(calibration.plan.weights), "int32": len(calibration.plan.biases)}


def test_layers_hold_the_same_integers_in_onnxruntime_and_litert_but_for_rare_ties(files):
    folder, calibration = files
    inputs = ArrayDataset({"image": tie_inputs(calibration, 4)})
    tflite = open_session(folder / "int8.tflite")
    layers = layer_agreement(folder / "int8.onnx", folder / "int8.tflite", calibration.activations, tflite.inputs,
                             inputs, 1)  # fmt: skip
    assert len(layers) >= len(calibration.activations) - 2  # every activation found in both files but a shared few
    assert layers[0].tensor == "image" and layers[0].op is None
    summary = divergence_summary(layers, onnx.load(str(folder / "int8.onnx")).graph, "logits")
    assert layers[0].exact == 1.0  # the input: rounded as TFLite's QUANTIZE does, in both files
    # Where the integers part afresh, it is a rare value: the layer's kernel rounds a near-half-way value the other
    # way (XNNPACK's ADD: 21-bit fixed-point ratios, rounding half up; onnxruntime's QLinearAdd: float32 ratios,
    # half to even; requantized convolutions, about one value in 10^5). No layer starts with a systematic difference.
    assert all(entry["exact"] >= 0.9999 for entry in summary["divergence_starts"]), summary["divergence_starts"]
    onnx_out = predict(open_session(folder / "int8.onnx"), inputs, 1)["logits"]
    steps = np.abs(onnx_out - predict(tflite, inputs, 1)["logits"]) / float(calibration.activations["logits"].scale)
    assert np.mean(steps <= 1.001) >= 0.99, np.mean(steps <= 1.001)


def test_a_layer_that_rounds_differently_is_named_where_it_starts(files):
    """The summary's attribution, on a made-up case: the integers of one conv differ, everything after it too."""
    folder, calibration = files
    from edgepack.calibration.agreement import LayerAgreement

    graph = onnx.load(str(folder / "int8.onnx")).graph
    names = list(calibration.activations)
    layers = [LayerAgreement(t, None, 1.0, 1.0, 0, 10) for t in names[:3]]
    layers += [LayerAgreement(t, "Conv", 0.5, 0.9, 3, 10) for t in names[3:]]
    summary = divergence_summary(layers, graph, "logits")
    assert summary["first_divergence"]["tensor"] == names[3]
    assert [e["tensor"] for e in summary["divergence_starts"]] == [names[3]]  # the rest read differing inputs
    assert len(summary["worst"]) == 5 and summary["layers_identical"] == 3
