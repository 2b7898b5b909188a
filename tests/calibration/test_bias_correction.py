"""Bias correction: the correction equals E[(W_q - W) x] computed by hand (padding included), it removes the
mean weight-quantization error on held-out data, and the quantize stage runs CLE + bias correction + per-tensor
weights end to end, both integer files recovering float accuracy in their runtimes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgepack.calibration.bias_correction import correct_biases, quantized_weight, with_corrected_model
from edgepack.calibration.equalize import equalize_model
from edgepack.calibration.plan import plan_quantization
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.sources import load_digits_dataset
from edgepack.converters.qdq import write_qdq_model
from edgepack.converters.runtime import open_session
from edgepack.converters.verify import predict
from onnx import TensorProto, helper, numpy_helper

import edgepack
from edgepack.core.dataset import ArrayDataset
from edgepack.recipe import parse_recipe
from tests.calibration import depthwise_case as case
from tests.edgepack.helpers import artifact, image_recipe


def _conv_then_gemm(rng) -> tuple[onnx.ModelProto, dict]:
    #  x -> Conv(pad 1, no bias) -> Relu -> Flatten -> Gemm(transB=1, bias) -> y
    weights = {"w": rng.standard_normal((4, 2, 3, 3)) * 0.3, "g": rng.standard_normal((5, 64)) * 0.2,
               "gb": rng.standard_normal(5)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1, name="gemm")]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


@pytest.mark.parametrize("per_channel", [True, False])
def test_correction_is_the_mean_weight_error_times_the_layer_input(per_channel):
    rng = np.random.default_rng(0)
    model, weights = _conv_then_gemm(rng)
    data = ArrayDataset({"x": (rng.random((10, 2, 4, 4)) + 0.5).astype(np.float32)})  # mean far from 0: a real shift
    result = correct_biases(model, plan_quantization(model), data, batch_size=4, per_channel_weights=per_channel)
    x = torch.from_numpy(data.inputs["x"])
    w = weights["w"].astype(np.float32)
    conv_error = torch.from_numpy(quantized_weight(w, 0, per_channel) - w)
    expected_conv = torch.nn.functional.conv2d(x, conv_error, padding=1).mean((0, 2, 3)).numpy()  # borders: zeros
    hidden = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(w), padding=1)).flatten(1).numpy()
    g = weights["g"].astype(np.float32)
    expected_gemm = (hidden @ (quantized_weight(g, 0, per_channel) - g).T).mean(0)
    assert list(result.corrections) == ["conv", "gemm"]
    assert np.allclose(result.corrections["conv"], expected_conv, rtol=1e-4, atol=1e-7)
    assert np.allclose(result.corrections["gemm"], expected_gemm, rtol=1e-4, atol=1e-7)
    assert np.abs(expected_conv).max() > 1e-4  # the test would notice a missing correction
    stored = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    conv = next(n for n in result.model.graph.node if n.name == "conv")
    assert len(conv.input) == 3 and np.allclose(stored[conv.input[2]], -expected_conv, rtol=1e-4, atol=1e-7)
    assert np.allclose(stored["gb"], weights["gb"] - expected_gemm, rtol=1e-4, atol=1e-6)
    assert len(next(n for n in model.graph.node if n.name == "conv").input) == 2  # the input model is unchanged
    replanned = with_corrected_model(calibrate(model, data, QuantScheme()), result.model).plan
    assert [b.initializer for b in replanned.biases] == [conv.input[2], "gb"]  # the added bias is quantized too


@pytest.fixture(scope="module")
def equalized(tmp_path_factory):
    weights = case.trained_weights(tmp_path_factory)
    spread = case.export(case.load_model(weights, spread=True), tmp_path_factory.mktemp("bias") / "spread.onnx")
    return equalize_model(spread).model


def test_correction_removes_the_mean_output_error_per_channel_on_held_out_data(equalized, tmp_path):
    train, test = load_digits_dataset("image", "train"), load_digits_dataset("image", "test")
    scheme = QuantScheme(per_channel_weights=False)
    calibration = calibrate(equalized, train, scheme)
    learned = correct_biases(equalized, calibration.plan, train.head(256), 1, per_channel_weights=False)
    held_out = correct_biases(equalized, calibration.plan, test, 1, per_channel_weights=False).corrections
    assert list(learned.corrections) == ["/0/Conv", "/3/Conv", "/6/Conv", "/11/Gemm"]
    for layer, error in held_out.items():  # error: E[(W_q - W) x] per channel on samples correction never saw
        residual = error - learned.corrections[layer]
        assert np.abs(residual).mean() < 0.1 * np.abs(error).mean(), layer  # measured 0.4% to 2.3%
    onnx.save(equalized, str(tmp_path / "float.onnx"))
    reference = predict(open_session(tmp_path / "float.onnx"), test, 1)["logits"]
    shifts = {}
    corrected = with_corrected_model(calibration, learned.model)
    for tag, model, used in (("plain", equalized, calibration), ("corrected", learned.model, corrected)):
        for activations in ("int8", "float"):
            path = tmp_path / f"{tag}-{activations}.onnx"
            grids = used.activations if activations == "int8" else {}
            write_qdq_model(model, path, used.plan, grids, per_channel_weights=False)
            logits = predict(open_session(path), test, 1)["logits"]
            shifts[tag, activations] = float(np.abs((logits - reference).mean(0)).mean())  # per class, onnxruntime
    assert shifts["corrected", "float"] < 0.75 * shifts["plain", "float"]  # int8 weights alone: measured 0.040 vs 0.070
    assert shifts["corrected", "int8"] < 0.95 * shifts["plain", "int8"]  # int8 activations too: 0.051 vs 0.063


PER_TENSOR_CLE = {"stage": "quantize", "per_channel_weights": False, "cross_layer_equalization": True,
                  "bias_correction": True}  # fmt: skip


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cle_stage")
    spread = case.load_model(case.trained_weights(tmp_path_factory), spread=True)
    torch.save(spread.state_dict(), folder / "spread.pt")
    stages = [{"stage": "export", "exporter": "legacy"}, PER_TENSOR_CLE]
    recipe = image_recipe("depthwise_relu_net", folder / "spread.pt", stages=stages) | {"bench": None}
    return edgepack.pack(parse_recipe(recipe), out=folder / "run", quiet=True)


def test_quantize_stage_equalizes_corrects_and_recovers_float_accuracy_in_both_runtimes(packed):
    results = packed.results
    assert [a["name"] for a in results["artifacts"]] == ["torch-fp32", "onnx-fp32", "onnx-fp32-equalized",
                                                         "onnx-int8", "tflite-int8"]  # fmt: skip
    equalized = artifact(results, "onnx-fp32-equalized")
    assert equalized["precision"] == "fp32" and equalized["parent"] == "onnx-fp32" and equalized["stage"] == "quantize"
    assert equalized["verification"]["passed"]  # float tolerance, against the torch model
    float_top1 = artifact(results, "torch-fp32")["accuracy"]["top1"]
    assert equalized["accuracy"]["top1"] == float_top1
    for name in ("onnx-int8", "tflite-int8"):
        integer = artifact(results, name)
        assert integer["parent"] == "onnx-fp32-equalized"
        assert integer["accuracy"]["top1"] >= float_top1 - 0.03  # per-tensor without CLE: 0.10 (test_equalize)
        details = integer["details"]
        assert details["cross_layer_equalization"]["pairs"] == 2
        assert details["bias_correction"]["layers"] == ["/0/Conv", "/3/Conv", "/6/Conv", "/11/Gemm"]
        assert 0 < details["bias_correction"]["largest_correction"]["value"] < 1
    weights = artifact(results, "onnx-int8")["details"]["weights"]
    assert len(weights) == 4 and all(w["axis"] is None and len(w["scale"]) == 1 for w in weights.values())
    scheme = artifact(results, "onnx-int8")["details"]["scheme"]
    assert scheme["per_channel_weights"] is False and scheme["bias_correction"] is True


def test_convert_command_takes_the_same_options(tmp_path_factory, tmp_path):
    from edgepack.convert_file import convert_file
    from edgepack.core.errors import UserError

    spread = case.load_model(case.trained_weights(tmp_path_factory), spread=True)
    case.export(spread, tmp_path / "spread.onnx")
    train, test = load_digits_dataset("image", "train"), load_digits_dataset("image", "test")
    np.savez(tmp_path / "calib.npz", image=train.inputs["image"][:256])
    options = {"per_channel_weights": False, "cross_layer_equalization": True, "bias_correction": True}
    convert_file(tmp_path / "spread.onnx", to="tflite", out=tmp_path / "cle.tflite", input_shapes=[],
                 precision="int8", calib=tmp_path / "calib.npz", quant_options=options)  # fmt: skip
    assert case.top1(tmp_path / "cle.tflite", test) >= case.top1(tmp_path / "spread.onnx", test) - 0.03
    weights = case.tflite_weights(tmp_path / "cle.tflite")
    assert len(weights) == 4 and all(len(scales) == 1 for scales, _ in weights)  # 3 convs + classifier, 1 scale each
    with pytest.raises(UserError, match="cross_layer_equalization only apply to --precision int8"):
        convert_file(tmp_path / "spread.onnx", to="tflite", out=tmp_path / "f.tflite", input_shapes=[],
                     quant_options={"cross_layer_equalization": True})  # fmt: skip


@pytest.mark.parametrize("flag", [float(np.finfo(np.float32).min), -np.inf])
def test_positions_holding_mask_flags_do_not_decide_the_correction(flag):
    """A Gemm reading rows an attention mask flagged: its weight error times the flag is ~1e36 (finfo.min) or NaN
    (-inf) there; before, those rows alone set the bias (1e34 or NaN). Now the correction is that of the real rows."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Sub", ["one", "mask"], ["inverted"]), helper.make_node("Mul", ["inverted", "flag"], ["m"]),
         helper.make_node("Add", ["x", "m"], ["masked"]), helper.make_node("Gemm", ["masked", "w", "b"], ["y"])],
        "masked_gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]),
                        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array(flag if np.isfinite(flag) else 1.0, np.float32), "flag")])  # fmt: skip
    if not np.isfinite(flag):  # (1 - mask) * inf is NaN where the mask is 1: -inf comes from a Where instead
        graph.node[1].CopyFrom(helper.make_node("Where", ["is_padding", "minus_inf", "zero"], ["m"]))
        graph.node.insert(1, helper.make_node("Cast", ["inverted"], ["is_padding"], to=TensorProto.BOOL))
        graph.initializer.extend([numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf"),
                                  numpy_helper.from_array(np.array(0.0, np.float32), "zero")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((64, 8)).astype(np.float32) + 1.0  # a mean input, so the correction is not ~0
    mask = (rng.random((64, 1)) > 0.25).astype(np.float32)
    plan = plan_quantization(model)
    flagged = correct_biases(model, plan, ArrayDataset({"x": x, "mask": mask}), batch_size=8).corrections
    real = mask[:, 0] == 1
    clean = correct_biases(model, plan, ArrayDataset({"x": x[real], "mask": mask[real]}), batch_size=8).corrections
    np.testing.assert_allclose(next(iter(flagged.values())), next(iter(clean.values())),
                               rtol=1e-5, atol=1e-7)  # fmt: skip


def _prepared(model):
    from edgepack.stages.quantize_accuracy import FloatPreparation

    return FloatPreparation(source=None, model=model)


def _auto_correction(fit: np.ndarray, held_out: np.ndarray):
    """bias_correction auto on the conv -> gemm net with per-tensor weights (a large mean weight error)."""
    from edgepack.stages.quantize import QuantizeConfig
    from edgepack.stages.quantize_accuracy import apply_bias_correction

    model, _ = _conv_then_gemm(np.random.default_rng(0))
    config = QuantizeConfig(method="minmax", per_channel_weights=False, weight_rounding="nearest")
    assert config.bias_correction == "auto"  # the default
    fit, held_out = ArrayDataset({"x": fit}), ArrayDataset({"x": held_out})
    calibration = calibrate(model, fit, config)
    prepared = _prepared(model)
    chosen = apply_bias_correction(config, prepared, calibration, fit, 4, held_out)
    return prepared, chosen is not calibration


def test_auto_keeps_the_correction_where_it_brings_held_out_outputs_closer_to_float():
    rng = np.random.default_rng(1)
    data = (rng.random((48, 2, 4, 4)) + 0.5).astype(np.float32)  # one distribution, its mean far from 0
    prepared, replanned = _auto_correction(data[:32], data[32:])
    choice = prepared.details["bias_correction_choice"]
    assert choice["applied"] and replanned and prepared.correction is not None
    assert choice["held_out_error"]["with"] < 0.7 * choice["held_out_error"]["without"]
    assert choice["measured_on"] == "16 held-out calibration samples, relative squared error to float"


def test_auto_drops_the_correction_where_held_out_data_disagrees_with_what_it_was_measured_on():
    # The held-out inputs have the opposite mean (within the fitted range): the correction learned on the fitted
    # samples adds to their error instead of removing it.
    rng = np.random.default_rng(1)
    fit = np.concatenate([rng.uniform(-0.5, 1.5, (30, 2, 4, 4)), rng.uniform(-1.5, 1.5, (2, 2, 4, 4))])
    held_out = rng.uniform(-1.5, 0.5, (16, 2, 4, 4))
    prepared, replanned = _auto_correction(fit.astype(np.float32), held_out.astype(np.float32))
    choice = prepared.details["bias_correction_choice"]
    assert not choice["applied"] and not replanned and prepared.correction is None
    assert choice["held_out_error"]["with"] > choice["held_out_error"]["without"]


def test_auto_without_held_out_samples_corrects_nothing_and_says_why():
    from edgepack.stages.quantize import QuantizeConfig
    from edgepack.stages.quantize_accuracy import apply_bias_correction

    model, _ = _conv_then_gemm(np.random.default_rng(0))
    data = ArrayDataset({"x": np.random.default_rng(2).random((16, 2, 4, 4)).astype(np.float32)})
    calibration = calibrate(model, data, QuantScheme(method="minmax"))
    prepared = _prepared(model)
    nearest = QuantizeConfig(weight_rounding="nearest")
    assert apply_bias_correction(nearest, prepared, calibration, data, 4, None) is calibration
    assert prepared.details["bias_correction_choice"]["applied"] is False
    assert "too few calibration samples" in prepared.details["bias_correction_choice"]["why"]


def test_auto_after_gptq_or_adaround_corrects_nothing_and_true_alone_means_nearest_rounding():
    from edgepack.stages.quantize import QuantizeConfig
    from edgepack.stages.quantize_accuracy import apply_bias_correction

    model, _ = _conv_then_gemm(np.random.default_rng(0))
    data = ArrayDataset({"x": np.random.default_rng(2).random((48, 2, 4, 4)).astype(np.float32)})
    calibration = calibrate(model, data, QuantScheme(method="minmax"))
    prepared = _prepared(model)
    assert apply_bias_correction(QuantizeConfig(), prepared, calibration, data, 4, data) is calibration
    assert "rounded by gptq" in prepared.details["bias_correction_choice"]["why"]  # the default rounding
    assert QuantizeConfig(bias_correction=True).weight_rounding == "nearest"
    with pytest.raises(ValueError, match="weight_rounding 'adaround' already minimises"):
        QuantizeConfig(bias_correction=True, weight_rounding="adaround")
