"""SmoothQuant: outlier channels of a LayerNorm output move into the weights reading it; the float function stays,
the int8 one gets closer to it; a LayerNorm whose output is also a residual branch is left as it is, and why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.smoothing import smooth_quant
from edgepack.converters.qdq import write_qdq_model
from onnx import helper, numpy_helper

from edgepack.core.dataset import ArrayDataset
from tests.converters.integer_check import run_onnx, sqnr_db

WIDTH, OUT, TOKENS = 32, 48, 8


def norm_then_dense(residual: bool = False, decomposed: bool = False) -> onnx.ModelProto:
    """x -> LayerNorm (two outlier channels, as trained transformers have) -> MatMul [-> + the LayerNorm output]."""
    rng = np.random.default_rng(0)
    gamma = np.ones(WIDTH, np.float32)
    gamma[[3, 17]] = 60.0
    beta = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
    weight = (rng.standard_normal((WIDTH, OUT)) / np.sqrt(WIDTH)).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["normed"], name="norm", axis=-1)]
    if decomposed:  # a LayerNorm below opset 17: its scale and bias as a Mul and an Add (on unit-variance inputs)
        nodes = [helper.make_node("Mul", ["x", "gamma"], ["scaled"], name="scale"),
                 helper.make_node("Add", ["scaled", "beta"], ["normed"], name="norm")]  # fmt: skip
    nodes.append(helper.make_node("MatMul", ["normed", "weight"], ["dense"], name="dense"))
    if residual:
        weight = weight[:, :WIDTH].copy()
        nodes.append(helper.make_node("Add", ["dense", "normed"], ["y"], name="residual"))
    else:
        nodes.append(helper.make_node("Identity", ["dense"], ["y"], name="out"))
    width = WIDTH if residual else OUT
    graph = helper.make_graph(
        nodes, "norm_dense", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", TOKENS, WIDTH])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", TOKENS, width])],
        [numpy_helper.from_array(v, n) for n, v in (("gamma", gamma), ("beta", beta), ("weight", weight))])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def inputs(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, TOKENS, WIDTH)).astype(np.float32)}


def int8_sqnr(model: onnx.ModelProto, folder, evaluation: dict, reference: np.ndarray) -> float:
    calibration = calibrate(model, ArrayDataset(inputs(64, seed=1)), QuantScheme())
    path = folder / "int8.onnx"
    write_qdq_model(model, path, calibration.plan, calibration.activations)
    return sqnr_db(reference, run_onnx(path, evaluation)["y"])


@pytest.mark.parametrize("decomposed", [False, True])
def test_smoothing_keeps_the_float_function_and_brings_int8_closer_to_it(tmp_path, decomposed):
    model = norm_then_dense(decomposed=decomposed)
    smoothing = smooth_quant(model, ArrayDataset(inputs(64, seed=1)), alpha=0.5)
    assert [s["node"] for s in smoothing.smoothed] == ["norm"] and smoothing.smoothed[0]["readers"] == ["dense"]
    assert smoothing.smoothed[0]["spread_before"] > 40 > 10 > smoothing.smoothed[0]["spread_after"]
    onnx.save(model, str(tmp_path / "float.onnx"))
    onnx.save(smoothing.model, str(tmp_path / "smoothed.onnx"))
    evaluation = inputs(16, seed=2)
    reference = run_onnx(tmp_path / "float.onnx", evaluation)["y"]
    np.testing.assert_allclose(run_onnx(tmp_path / "smoothed.onnx", evaluation)["y"], reference, rtol=1e-4, atol=1e-4)
    assert numpy_helper.to_array(model.graph.initializer[0])[3] == 60.0  # the input model is not changed
    before = int8_sqnr(model, tmp_path, evaluation, reference)
    after = int8_sqnr(smoothing.model, tmp_path, evaluation, reference)
    assert after > before + 3, (before, after)  # measured 29.4 -> 34.2 dB


def test_a_layer_norm_feeding_a_residual_branch_is_left_alone_with_its_reason():
    model = norm_then_dense(residual=True)
    smoothing = smooth_quant(model, ArrayDataset(inputs(16, seed=1)))
    assert smoothing.smoothed == []
    assert smoothing.skipped == [{"node": "norm", "reason": "its output is also read by ['Add'] (a residual branch or "
                                  "an output needs it unscaled)"}]  # fmt: skip
    assert smoothing.model.graph.initializer[0] == model.graph.initializer[0]


def test_the_quantize_stage_options_prepare_the_float_model_and_record_what_they_did(monkeypatch):
    """smooth_quant and weight_rounding as the quantize stage runs them (stages/quantize_accuracy.py), before
    calibrating: the model the files are written from changes, the source artifact stays their parent."""
    from edgepack.core.artifacts import Artifact, Format
    from edgepack.stages.quantize import QuantizeConfig
    from edgepack.stages.quantize_accuracy import FloatPreparation, apply_smoothing, apply_weight_rounding

    monkeypatch.setattr("edgepack.calibration.adaround.ITERATIONS", 50)  # the stage's wiring, not the optimisation
    model, data = norm_then_dense(), ArrayDataset(inputs(16, seed=1))
    source = Artifact(name="onnx-fp32", format=Format.ONNX, path="m.onnx", sha256="0", bytes=0, stage="export")
    prepared = FloatPreparation(source, model)
    config = QuantizeConfig(smooth_quant={"alpha": 0.5}, weight_rounding="adaround")
    apply_smoothing(config, prepared, data)
    smoothed = prepared.model
    assert smoothed is not model and not prepared.source_holds_model
    assert prepared.details["smooth_quant"]["smoothed"][0]["node"] == "norm"
    apply_weight_rounding(config, prepared, data)
    assert prepared.model is not smoothed and [r["node"] for r in prepared.details["adaround"]["layers"]] == ["dense"]
    assert prepared.source is source
    untouched = FloatPreparation(source, model)
    apply_smoothing(QuantizeConfig(), untouched, data)
    apply_weight_rounding(QuantizeConfig(weight_rounding="nearest"), untouched, data)
    assert untouched.model is model and untouched.details == {}
    apply_weight_rounding(QuantizeConfig(), untouched, data)  # the default: gptq
    assert untouched.model is not model and [r["node"] for r in untouched.details["gptq"]["layers"]] == ["dense"]
