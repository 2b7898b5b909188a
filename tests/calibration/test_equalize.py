"""Cross-layer equalization: the sqrt scaling rule on hand-made weights, function preserved on hand-drawn graphs,
and on a digits-trained depthwise net whose per-tensor int8 collapses (tests/calibration/depthwise_case.py), the
recovery measured in onnxruntime and LiteRT. Per-tensor weights read back from both files."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgepack.calibration.equalize import equalization_scales, equalize_model
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.sources import load_digits_dataset
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
from edgepack.converters.qdq import write_qdq_model
from edgepack.converters.runtime import open_session
from edgepack.converters.verify import predict
from onnx import TensorProto, helper, numpy_helper

from edgepack.core.quantization import weight_params
from tests.calibration import depthwise_case as case


def test_scaling_rule_equalizes_each_channel_pair_at_the_geometric_mean():
    first, second = np.array([4.0, 1.0, 0.25, 0.0]), np.array([1.0, 1.0, 4.0, 2.0])
    scales = equalization_scales(first, second)
    assert np.allclose(scales, [2.0, 1.0, 0.25, 1.0])  # sqrt(r1 r2) / r2; a dead channel is left alone
    assert np.allclose((first / scales)[:3], np.sqrt(first * second)[:3])
    assert np.allclose((second * scales)[:3], np.sqrt(first * second)[:3])


def _model(nodes, weights: dict, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _skewed(rng, shape, axis) -> np.ndarray:
    """Random weights whose channels along ``axis`` span three decades of range."""
    factors = 10 ** rng.uniform(-2, 1, shape[axis])
    return rng.standard_normal(shape) * factors.reshape([-1 if i == axis else 1 for i in range(len(shape))])


def test_conv_depthwise_conv_triple_is_equalized_and_keeps_its_function():
    #  x -> Conv(3->8) -> Relu -> depthwise Conv(8) -> Relu -> Conv(8->4) -> y
    rng = np.random.default_rng(0)
    weights = {"w1": _skewed(rng, (8, 3, 3, 3), 0), "b1": rng.standard_normal(8),
               "w2": _skewed(rng, (8, 1, 3, 3), 0), "b2": rng.standard_normal(8),
               "w3": rng.standard_normal((4, 8, 1, 1)), "b3": rng.standard_normal(4)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, group=8, name="depthwise"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="pointwise")]  # fmt: skip
    model = _model(nodes, weights)
    result = equalize_model(model)
    pairs = [(p.first, p.second, p.through) for p in result.pairs]
    assert pairs == [("conv1", "depthwise", ["Relu"]), ("depthwise", "pointwise", ["Relu"])]
    new = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    w1, w2, w3 = np.abs(new["w1"]).max((1, 2, 3)), np.abs(new["w2"]).max((1, 2, 3)), np.abs(new["w3"]).max((0, 2, 3))
    assert np.allclose(w1, w2, rtol=1e-5) and np.allclose(w2, w3, rtol=1e-5)  # converged: both pairs equal
    before, after = result.pairs[0].spread_before, result.pairs[0].spread_after
    assert before[0] > 100 and after[0] < before[0] / 10 and after[0] == pytest.approx(after[1], rel=1e-5)
    assert result.iterations > 1 and result.summary()["pairs"] == 2
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    expected = _run(model, x)
    assert np.allclose(_run(result.model, x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (8, 3, 3, 3)  # the input model is unchanged
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), weights["w1"].astype(np.float32))


def test_gemm_pair_with_either_weight_layout_is_equalized():
    #  x -> Flatten -> Gemm(transB=1) -> Relu -> Gemm(transB=0) -> y
    rng = np.random.default_rng(1)
    weights = {"a": _skewed(rng, (6, 108), 0), "ab": rng.standard_normal(6), "b": rng.standard_normal((6, 5))}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "a", "ab"], ["g"], transB=1, name="gemm1"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "b"], ["y"], name="gemm2")]  # fmt: skip
    model = _model(nodes, weights)
    result = equalize_model(model)
    new = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert len(result.pairs) == 1 and np.allclose(np.abs(new["a"]).max(1), np.abs(new["b"]).max(1), rtol=1e-5)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert np.allclose(_run(result.model, x), _run(model, x), rtol=1e-4, atol=1e-5)


def _clip_chain(clip_inputs: list[str], extra_nodes=(), opset: int = 17, **clip_attributes) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    weights = {"w1": rng.standard_normal((4, 3, 1, 1)), "w2": rng.standard_normal((2, 4, 1, 1)),
               "zero": 0.0, "six": 6.0}  # fmt: skip
    nodes = [*extra_nodes, helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node("Clip", ["c", *clip_inputs], ["r"], name="clip", **clip_attributes),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]  # fmt: skip
    return _model(nodes, weights, opset)


def test_relu6_is_equalized_with_its_clip_per_channel_computed_clip_bounds_are_skipped():
    relu6 = equalize_model(_clip_chain(["zero", "six"]))  # issue 14: was skipped (test_equalize_relu6.py)
    assert relu6.summary()["pairs"] == 1 and relu6.pairs[0].clips_per_channel == ["clip"]
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32) * 4
    assert np.allclose(_run(relu6.model, x), _run(_clip_chain(["zero", "six"]), x), rtol=1e-4, atol=1e-5)
    low_six = equalize_model(_clip_chain(["six", "six"]))  # a lower bound other than 0 does not pass a scale
    assert low_six.pairs == [] and "only a lower bound of 0 passes" in low_six.skipped[0]["reason"]
    computed = [helper.make_node("ReduceMin", ["x"], ["low"], keepdims=0, name="low")]
    dynamic = equalize_model(_clip_chain(["low"], computed))
    assert dynamic.pairs == [] and "non-constant bounds" in dynamic.skipped[0]["reason"]
    assert len(equalize_model(_clip_chain(["zero"])).pairs) == 1  # Clip(0, none) is relu
    assert len(equalize_model(_clip_chain([], opset=6, min=0.0)).pairs) == 1  # opset 6: bounds as attributes
    opset6 = equalize_model(_clip_chain([], opset=6, min=0.0, max=6.0))  # Min broadcasts only from opset 8
    assert opset6.pairs == [] and "opset < 11" in opset6.skipped[0]["reason"]


def test_quantize_stage_records_zero_pairs_and_why_and_writes_no_float_file():
    from edgepack.stages.quantize_accuracy import prepare_float_model

    scheme = QuantScheme(cross_layer_equalization=True)
    model = _clip_chain(["low"], [helper.make_node("ReduceMin", ["x"], ["low"], keepdims=0, name="low")])
    prepared = prepare_float_model(scheme, ctx=None, source="onnx-fp32", model=model)
    recorded = prepared.details["cross_layer_equalization"]
    assert prepared.artifacts == [] and prepared.source == "onnx-fp32"  # the integer files keep their parent
    assert recorded["pairs"] == 0 and recorded["reason"].startswith("no Conv/Gemm")
    assert "non-constant bounds" in recorded["skipped"][0]["reason"]


@pytest.fixture(scope="module")
def depthwise(tmp_path_factory):
    """The trained depthwise net (float), the same with its channel ranges spread, and the spread one equalized."""
    folder = tmp_path_factory.mktemp("equalize")
    weights = case.trained_weights(tmp_path_factory)
    spread = case.export(case.load_model(weights, spread=True), folder / "spread.onnx")
    equalization = equalize_model(spread)
    onnx.save(equalization.model, str(folder / "equalized.onnx"))
    return {"folder": folder, "spread": spread, "equalization": equalization,
            "float": case.export(case.load_model(weights, spread=False), folder / "float.onnx")}  # fmt: skip


def per_tensor_files(model: onnx.ModelProto, folder, tag: str) -> tuple:
    """ONNX QDQ and TFLite int8 with per-tensor weights from one calibration; returns both paths and the
    weight parameters the QDQ writer used."""
    train = load_digits_dataset("image", "train")
    calibration = calibrate(model, train, QuantScheme(per_channel_weights=False))
    onnx.save(model, str(folder / f"{tag}.float.onnx"))
    weights = write_qdq_model(model, folder / f"{tag}.int8.onnx", calibration.plan, calibration.activations,
                              per_channel_weights=False)  # fmt: skip
    ranges = calibration.fake_quant_ranges()
    convert_onnx_to_tflite(folder / f"{tag}.float.onnx", folder / f"{tag}.int8.tflite", {"image": [1, 1, 8, 8]},
                           FakeQuantization(ranges, per_channel_weights=False))  # fmt: skip
    return folder / f"{tag}.int8.onnx", folder / f"{tag}.int8.tflite", weights


def test_equalized_model_matches_the_original_and_its_pairs_have_equal_channel_ranges(depthwise):
    equalization, test = depthwise["equalization"], load_digits_dataset("image", "test")
    assert [(p.first, p.second, p.channels) for p in equalization.pairs] == [("/0/Conv", "/3/Conv", 16),
                                                                             ("/3/Conv", "/6/Conv", 16)]  # fmt: skip
    weights = {t.name: numpy_helper.to_array(t) for t in equalization.model.graph.initializer}
    nodes = {n.name: n for n in equalization.model.graph.node}
    first = np.abs(weights[nodes["/0/Conv"].input[1]]).max((1, 2, 3))
    middle = np.abs(weights[nodes["/3/Conv"].input[1]]).max((1, 2, 3))
    last_inputs = np.abs(weights[nodes["/6/Conv"].input[1]]).max((0, 2, 3))
    assert np.allclose(first, middle, rtol=1e-5) and np.allclose(middle, last_inputs, rtol=1e-5)
    for pair in equalization.pairs:
        assert max(pair.spread_before) > 1000 and max(pair.spread_after) < 10
    original = case.top1(depthwise["folder"] / "spread.onnx", test)
    folder = depthwise["folder"]
    logits = [predict(open_session(folder / f"{n}.onnx"), test, 1)["logits"] for n in ("spread", "equalized")]
    assert np.max(np.abs(logits[1] - logits[0])) <= 1e-4 * np.max(np.abs(logits[0]))
    assert case.top1(depthwise["folder"] / "equalized.onnx", test) == original


def test_per_tensor_int8_collapses_and_equalization_recovers_it_in_both_runtimes(depthwise):
    test, folder = load_digits_dataset("image", "test"), depthwise["folder"]
    float_top1 = case.top1(folder / "float.onnx", test)
    collapsed = [case.top1(path, test) for path in per_tensor_files(depthwise["spread"], folder, "spread")[:2]]
    recovered = [case.top1(path, test) for path in per_tensor_files(depthwise["equalization"].model, folder, "cle")[:2]]
    print(f"float {float_top1:.3f}; per-tensor int8 (onnxruntime, LiteRT) {collapsed} -> after CLE {recovered}")
    assert float_top1 > 0.88
    assert max(collapsed) < 0.3  # measured 0.10 in both
    assert min(recovered) >= float_top1 - 0.03


def test_per_tensor_weights_in_both_files_hold_one_scale_of_max_abs_over_127(depthwise):
    model = depthwise["equalization"].model
    onnx_path, tflite_path, weights = per_tensor_files(model, depthwise["folder"], "readback")
    floats = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    in_tflite = case.tflite_weights(tflite_path)
    assert len(weights) == 4  # three convs (one depthwise) and the classifier
    for name, params in weights.items():
        assert params.axis is None and np.ndim(params.scale) == 0
        assert params.scale == np.float32(np.abs(floats[name]).max() / 127)
        assert np.array_equal(stored[f"{name}_scale"], params.scale)
        integers = np.sort(stored[f"{name}_quantized"].ravel())
        assert np.array_equal(integers, np.sort(params.quantize(floats[name]).ravel()))
        matches = [v for s, v in in_tflite if len(s) == 1 and np.isclose(s[0], params.scale, rtol=1e-6)
                   and v.size == integers.size]  # fmt: skip
        assert any(np.array_equal(np.sort(v.ravel()), integers) for v in matches), name  # the same integers


def test_weight_params_per_tensor_is_max_abs_over_127():
    w = np.array([[0.5, -2.54], [0.01, 1.0]], np.float32)
    params = weight_params(w, None)
    assert params.scale == np.float32(2.54 / 127) and params.quantize(w).tolist() == [[25, -127], [0, 50]]
