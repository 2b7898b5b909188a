"""GPTQ weight rounding (the default): the layer errors it reports are the layers' real output errors for every
layer form it reads (strided, padded, grouped, depthwise, dilated and 1-D convs, Gemm both ways, MatMul), it lowers
them on inputs it never saw, and both files hold exactly its integers on nearest rounding's scales."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from edgepack.calibration.adaround import _Layer
from edgepack.calibration.gptq import gptq_model, round_layer
from edgepack.calibration.plan import plan_quantization
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.sources import load_digits_dataset
from edgepack.converters.qdq import quantized_constants
from onnx import helper, numpy_helper

from edgepack.core.quantization import weight_params
from tests.calibration.rounding_files import assert_both_files_hold_its_integers
from tests.converters.torch_check import calibrate_batchnorm, export
from tests.models import conv_net

SHAPE = [1, 1, 8, 8]

# op, attributes, weight shape, input shape (N first), weight axis: one of each layer form GPTQ reads as a matrix
LAYERS = {
    "conv strided, asymmetric pads": ("Conv", {"strides": [2, 2], "pads": [1, 0, 0, 1]}, (6, 3, 3, 3), (32, 3, 9, 9),
                                      0),
    "depthwise": ("Conv", {"group": 4, "pads": [1, 1, 1, 1]}, (4, 1, 3, 3), (32, 4, 7, 7), 0),
    "grouped, dilated": ("Conv", {"group": 2, "dilations": [2, 2]}, (6, 2, 3, 3), (32, 4, 9, 9), 0),
    "pointwise": ("Conv", {}, (5, 7, 1, 1), (32, 7, 6, 6), 0),
    "conv 1-d": ("Conv", {"pads": [2, 0]}, (5, 3, 3), (32, 3, 12), 0),
    "gemm transB": ("Gemm", {"transB": 1}, (5, 12), (512, 12), 0),
    "gemm": ("Gemm", {}, (12, 5), (512, 12), 1),
    "matmul 3-d input": ("MatMul", {}, (12, 5), (64, 8, 12), 1),
}


def _smooth(shape: tuple, seed: int) -> np.ndarray:
    """Correlated inputs (running sums along the channels and the last axis, centred): nearest rounding ignores the
    correlation, GPTQ uses it; on white noise both would be about as good."""
    x = np.cumsum(np.cumsum(np.random.default_rng(seed).standard_normal(shape), axis=1), axis=-1)
    return ((x - x.mean()) / x.std()).astype(np.float32)


def _relative_error(layer: _Layer, x: np.ndarray, w: np.ndarray, w_q: np.ndarray) -> float:
    with torch.no_grad():
        reference = layer(torch.from_numpy(x), torch.from_numpy(w)).double()
        quantized = layer(torch.from_numpy(x), torch.from_numpy(w_q.astype(np.float32))).double()
    return float(((quantized - reference) ** 2).sum() / (reference**2).sum())


@pytest.mark.parametrize("case", list(LAYERS))
def test_reported_errors_are_the_layer_output_errors_and_gptq_lowers_them_on_unseen_inputs(case):
    op, attributes, weight_shape, input_shape, axis = LAYERS[case]
    node = helper.make_node(op, ["x", "w"], ["y"], name="layer", **attributes)
    w = np.random.default_rng(0).standard_normal(weight_shape).astype(np.float32)
    params = weight_params(w, axis)
    fitted, unseen = _smooth(input_shape, 1), _smooth(input_shape, 2)
    q, record = round_layer(node, fitted, w, params)
    layer = _Layer(node)
    nearest = params.quantize(w)
    assert record["error_nearest"] == pytest.approx(_relative_error(layer, fitted, w, params.dequantize(nearest)),
                                                    rel=1e-3)  # fmt: skip
    assert record["error_gptq"] == pytest.approx(_relative_error(layer, fitted, w, params.dequantize(q)), rel=1e-3)
    assert np.abs(q.astype(int) - nearest).max() <= 3 and q.dtype == np.int8
    on_unseen = [_relative_error(layer, unseen, w, params.dequantize(i)) for i in (nearest, q)]
    assert on_unseen[1] < 0.9 * on_unseen[0], on_unseen  # measured 0.25-0.87x (the pointwise 5x7 one the least)


def test_per_tensor_scale_is_kept_and_its_largest_weight_untouched():
    op, attributes, weight_shape, input_shape, _ = LAYERS["conv strided, asymmetric pads"]
    node = helper.make_node(op, ["x", "w"], ["y"], name="layer", **attributes)
    w = np.random.default_rng(3).standard_normal(weight_shape).astype(np.float32)
    params = weight_params(w, None)
    q, record = round_layer(node, _smooth(input_shape, 1), w, params)
    assert record["error_gptq"] < record["error_nearest"]
    largest = np.unravel_index(np.argmax(np.abs(w)), w.shape)
    assert abs(int(q[largest])) == 127 and record["changed"] > 0


def test_gptq_model_lowers_the_output_error_on_held_out_digits_and_both_files_hold_its_integers(tmp_path):
    torch.manual_seed(0)
    module = calibrate_batchnorm(conv_net(), SHAPE)
    path = export(module, tmp_path / "net.onnx", (torch.zeros(SHAPE),), ["image"], ["logits"])
    model = onnx.load(str(path))
    digits = load_digits_dataset("image", "train")
    fit, held_out = digits.head(64), digits.take(np.arange(64, 192))
    plan = plan_quantization(model)
    rounding = gptq_model(model, plan, fit)

    assert [layer["node"] for layer in rounding.layers] == [w.node for w in plan.weights]  # two Convs and the Gemm
    assert all(layer["error_gptq"] <= layer["error_nearest"] for layer in rounding.layers)
    nearest = quantized_constants(model.graph, plan, {})
    learned = quantized_constants(rounding.model.graph, plan, {})
    nearest_model = onnx.ModelProto()
    nearest_model.CopyFrom(model)
    for tensor in nearest_model.graph.initializer:
        if tensor.name in nearest:
            q, params = nearest[tensor.name]
            tensor.CopyFrom(numpy_helper.from_array(params.dequantize(q).astype(np.float32), tensor.name))
    for weight in plan.weights:
        np.testing.assert_array_equal(nearest[weight.initializer][1].scale, learned[weight.initializer][1].scale)
    # int8 weights alone (float activations), on digits the rounding never saw
    errors = [_output_error(model, m, held_out.inputs["image"]) for m in (nearest_model, rounding.model)]
    assert errors[1] < 0.8 * errors[0], errors

    assert_both_files_hold_its_integers(rounding.model, plan, fit, QuantScheme(method="minmax"), SHAPE, tmp_path)


def _output_error(reference: onnx.ModelProto, model: onnx.ModelProto, images: np.ndarray) -> float:
    outputs = []
    for m in (reference, model):
        session = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(np.concatenate([session.run(None, {"image": image[None]})[0] for image in images]))
    return float(np.mean((outputs[1] - outputs[0]) ** 2) / np.mean(outputs[0] ** 2))


def _rounded_preparation(tmp_path):
    """(the float conv net, its FloatPreparation after the default weight rounding, {node: weight initializer})."""
    from edgepack.stages.quantize import QuantizeConfig
    from edgepack.stages.quantize_accuracy import FloatPreparation, apply_weight_rounding

    torch.manual_seed(0)
    module = calibrate_batchnorm(conv_net(), SHAPE)
    model = onnx.load(str(export(module, tmp_path / "net.onnx", (torch.zeros(SHAPE),), ["image"], ["logits"])))
    prepared = FloatPreparation(source=None, model=model)
    apply_weight_rounding(QuantizeConfig(), prepared, load_digits_dataset("image", "train").head(64))
    return model, prepared, {w.node: w.initializer for w in plan_quantization(model).weights}


def _weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_a_layer_kept_float_in_a_file_gets_its_weight_from_before_rounding(tmp_path):
    model, prepared, weights = _rounded_preparation(tmp_path)
    first, *others = list(weights)
    assert not np.array_equal(_weight(prepared.model, weights[first]), _weight(model, weights[first]))  # on the grid
    mixed = prepared.model_for(set(others))  # the first layer runs float in this file
    np.testing.assert_array_equal(_weight(mixed, weights[first]), _weight(model, weights[first]))
    for node in others:
        np.testing.assert_array_equal(_weight(mixed, weights[node]), _weight(prepared.model, weights[node]))
        assert not np.array_equal(_weight(mixed, weights[node]), _weight(model, weights[node]))  # rounded by gptq
    assert prepared.model_for(set(weights)) is prepared.model  # all integer: nothing to restore


def test_the_mixed_precision_search_measures_against_the_float_model_not_the_rounded_one(tmp_path):
    from types import SimpleNamespace

    from edgepack.calibration.collect import model_outputs
    from edgepack.calibration.held_out import split_held_out

    from edgepack.stages.quantize import QuantizeConfig
    from edgepack.stages.quantize_mixed import mixed_calibrations

    model, prepared, weights = _rounded_preparation(tmp_path)
    config = QuantizeConfig(accuracy_target={"max_accuracy_drop_pp": 50.0})
    split = split_held_out(load_digits_dataset("image", "train").head(96), 64, "accuracy_target")
    calibration = calibrate(prepared.model, split.fit, config)
    mixed = mixed_calibrations(config, SimpleNamespace(task="classification"), prepared.model_for(set()),
                               calibration, "onnx-fp32", prepared.model_for, split)  # fmt: skip
    reference = model_outputs(model, mixed.scorer.dataset)["logits"]
    np.testing.assert_array_equal(mixed.scorer.reference["logits"], reference)  # the unrounded float model's
    candidate = mixed.scorer.quantized_from(calibration)  # every layer int8: every weight as rounded
    for name in weights.values():
        np.testing.assert_array_equal(_weight(candidate, name), _weight(prepared.model, name))


def test_the_quantize_stage_hands_the_search_the_unrounded_float_model(tmp_path, trained_weights, monkeypatch):
    from edgepack.calibration.sensitivity import RuntimeScorer

    import edgepack
    from edgepack.recipe import parse_recipe
    from tests.edgepack.helpers import artifact, image_recipe

    seen = []

    class Recording(RuntimeScorer):
        def __init__(self, float_model, *args, **kwargs):
            seen.append(float_model)
            super().__init__(float_model, *args, **kwargs)

    monkeypatch.setattr("edgepack.stages.quantize_mixed.RuntimeScorer", Recording)
    target = {"max_accuracy_drop_pp": 50.0}
    stages = [{"stage": "export", "exporter": "legacy"},
              {"stage": "quantize", "formats": ["onnx"], "accuracy_target": target}]  # fmt: skip
    recipe = image_recipe("digits_example", trained_weights("digits_example"), stages=stages) | {"bench": None}
    run = edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    assert artifact(run.results, "onnx-int8")["details"]["gptq"]["layers"]  # the weights were rounded
    exported = onnx.load(str(run.run_dir / artifact(run.results, "onnx-fp32")["path"]))
    [searched_against] = seen
    for name in {w.initializer for w in plan_quantization(exported).weights}:
        np.testing.assert_array_equal(_weight(searched_against, name), _weight(exported, name), err_msg=name)
