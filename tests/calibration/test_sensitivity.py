"""Sensitivity analysis and mixed precision on a conv net made sensitive on purpose (tests/calibration/outlier_case.py).

The digits-trained ``conv_net`` gets a ninth channel in its first conv, a copy of channel 0 scaled x100 (filter,
BatchNorm gamma and beta), that the second conv ignores (zero weights). The float model computes exactly what the
trained net computes, but the first conv's output now spans ~100x its useful range, so its one per-tensor int8 grid
is far too coarse for the eight channels that matter: plain int8 loses ~10 points. Keeping that layer high (ONNX
int16, TFLite float) recovers it; every other tensor keeps edgepack's int8 grid. The quantize stage refuses to write
that plan as int8 files (the second conv, 94% of the MACs, then runs 16x8 or float): the files, the MAC rule and the
pipeline are tested on the bridged variant in test_mixed_precision_files.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.sensitivity import (
    AccuracyTarget,
    RuntimeScorer,
    mixed_precision_record,
    search_mixed_precision,
)
from edgepack.calibration.sources import load_digits_dataset
from edgepack.converters.torch_to_onnx import export_to_onnx
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import activation_params, weight_params
from edgepack.reports.markdown import mixed_precision_line
from tests.calibration.outlier_case import HIDDEN, SENSITIVE, TRAIN_EPOCHS, outlier_net, outlier_state
from tests.calibration.test_ptq_onnx import qdq_parameters
from tests.calibration.test_quantize_stage import tflite_parameters


@pytest.fixture(scope="module")
def conv_net_weights(tmp_path_factory):
    """conv_net trained for a few epochs only (its own, not the suite's 25-epoch one): this file stays fast."""
    from tests import models

    return models.train_and_save("conv_net", tmp_path_factory.mktemp("conv_net") / "conv_net.pt", TRAIN_EPOCHS)


@pytest.fixture(scope="module")
def outlier_weights(tmp_path_factory, conv_net_weights):
    path = tmp_path_factory.mktemp("outlier") / "outlier_net.pt"
    torch.save(outlier_state(torch.load(conv_net_weights, weights_only=True)), path)
    return path


@pytest.fixture(scope="module")
def outlier_onnx(outlier_weights, tmp_path_factory) -> onnx.ModelProto:
    model = outlier_net()
    model.load_state_dict(torch.load(outlier_weights, weights_only=True))
    path = tmp_path_factory.mktemp("outlier_onnx") / "outlier_net.onnx"
    export_to_onnx(model.eval(), (torch.zeros(1, 1, 8, 8),), path, input_names=["image"], output_names=["logits"],
                   opset=17, dynamo=False)  # fmt: skip
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def searched(outlier_onnx):
    train, test = load_digits_dataset("image", "train"), load_digits_dataset("image", "test")
    calibration = calibrate(outlier_onnx, train, QuantScheme(method="minmax"))  # the outlier spans the grid
    scorer = RuntimeScorer(outlier_onnx, test)
    return calibration, scorer, search_mixed_precision(calibration, scorer, AccuracyTarget(max_accuracy_drop_pp=0.5))


def test_the_outlier_net_computes_what_the_trained_net_computes(outlier_weights, conv_net_weights):
    from tests import models

    images = torch.from_numpy(load_digits_dataset("image", "test").inputs["image"])
    plain, outlier = models.conv_net().eval(), outlier_net().eval()
    plain.load_state_dict(torch.load(conv_net_weights, weights_only=True))
    outlier.load_state_dict(torch.load(outlier_weights, weights_only=True))
    with torch.no_grad():
        assert torch.allclose(plain(images), outlier(images), atol=1e-4)
        hidden = outlier[:3](images)
    assert hidden[:, 8].max() > 50 * hidden[:, :8].max()  # the outlier channel dominates the first conv's range


def test_ranking_puts_the_outlier_layer_first_and_plain_int8_misses_the_target(searched):
    _, scorer, result = searched
    assert scorer.float_top1 > 0.9
    assert [c.layer.name for c in result.ranking][0] == SENSITIVE
    first, second = result.ranking[0].score, result.ranking[1].score
    assert first.top1_drop_pp > 5.0 and second.top1_drop_pp < 0.5  # measured: 10.3 pp, then 0.0 pp
    assert first.output_sqnr_db < 15 < 30 < second.output_sqnr_db  # measured: 6.1 dB against 38.0 dB
    plain_int8 = result.steps[0]
    assert plain_int8[0] == [] and plain_int8[1].top1_drop_pp > 5.0  # measured: plain int8 loses 9.7 pp


def test_mixed_precision_keeps_only_the_outlier_layer_high_and_meets_the_target(searched):
    _, _, result = searched
    assert result.met and [layer.name for layer in result.kept] == [SENSITIVE] and result.high == "int16"
    assert result.steps[-1][0] == [SENSITIVE] and result.steps[-1][1].top1_drop_pp <= 0.5  # measured: 0.28 pp
    assert result.steps[-1][1].output_sqnr_db > 25  # measured: 33.1 dB, from 6.1 dB
    assert result.tflite_float == {SENSITIVE: "kept high; TFLite cannot mix int8 and int16 in one file"}


def test_a_layer_kept_float_loses_its_grids_weights_and_biases_in_onnx_and_recovers_too(searched):
    from edgepack.calibration.sensitivity import HighPrecision, with_layers_high

    calibration, scorer, result = searched
    layer = result.kept[0]
    floated = with_layers_high(calibration, [layer], HighPrecision.FLOAT)  # what int16x8 schemes keep high
    assert HIDDEN not in floated.activations and HIDDEN in calibration.activations
    assert layer.weights[0] not in {w.initializer for w in floated.plan.weights}
    assert len(floated.plan.biases) == len(calibration.plan.biases) - 1
    assert scorer.score(floated).top1_drop_pp <= 0.5  # measured: 0.28 pp, as with int16


def test_an_unreachable_target_is_reported_missed_with_every_layer_kept_high(outlier_onnx, searched):
    calibration, _, _ = searched
    unlabelled = ArrayDataset(load_digits_dataset("image", "test").head(64).inputs)  # no labels: the SQNR target
    scorer = RuntimeScorer(outlier_onnx, unlabelled)
    result = search_mixed_precision(calibration, scorer, AccuracyTarget(min_output_sqnr_db=200.0))
    assert not result.met and len(result.kept) == len(result.ranking) == 4  # int8 weights stay: 200 dB is out of reach
    assert result.steps[0][1].top1_drop_pp is None and result.steps[-1][1].output_sqnr_db < 200
    assert result.steps[-1][1].output_sqnr_db > result.steps[0][1].output_sqnr_db + 20  # yet it did help
    record = mixed_precision_record(result, "onnx")
    assert not record["target_met"] and [r["precision"] for r in record["layers"]] == ["int16"] * 4
    line = mixed_precision_line("onnx-int8", record)
    assert "target MISSED (output SQNR" in line and "target >= 200.0 dB" in line and SENSITIVE in line


@pytest.fixture(scope="module")
def mixed(searched, outlier_onnx):
    """What each file of the search's plan is written from (the stage itself refuses this plan as int8 files: the
    second conv would run 16x8 or float; the float island's mechanics are the same in the bridged net it writes)."""
    from edgepack.calibration.sensitivity import file_plans, plan_layers

    calibration, _, result = searched
    return file_plans(calibration, plan_layers(outlier_onnx, calibration.plan), result.kept, result.high)


def test_onnx_file_holds_the_outlier_layer_at_int16_and_the_rest_at_int8(mixed, outlier_onnx, searched, tmp_path):
    from edgepack.converters.qdq import write_qdq_model
    from edgepack.converters.runtime import OnnxSession

    weights = write_qdq_model(outlier_onnx, tmp_path / "mixed.onnx", mixed.onnx.plan, mixed.onnx.activations)
    stored = qdq_parameters(onnx.load(str(tmp_path / "mixed.onnx")))
    assert len(weights) == 3 and all(np.array_equal(stored[w][0], params.scale) for w, params in weights.items())
    for tensor, params in mixed.onnx.activations.items():
        expected = params.as_unsigned() if params.dtype == "int8" else params
        assert stored[tensor][0] == params.scale and stored[tensor][1] == expected.zero_point
    assert stored[HIDDEN][1].dtype == np.int16 and stored["image"][1].dtype == np.uint8
    int16 = activation_params(*searched[0].ranges[HIDDEN], "int16")  # the same calibrated range, the int16 grid
    assert stored[HIDDEN][0] == int16.scale and set(mixed.onnx.activations) == set(searched[0].activations)
    assert drop_pp(OnnxSession(tmp_path / "mixed.onnx"), searched[1]) <= 0.5  # measured: 0.28 pp (float 92.8%)


def test_tflite_file_keeps_the_outlier_layer_float_between_edgepacks_grids(mixed, outlier_onnx, searched, tmp_path):
    from edgepack.converters.runtime import TFLiteSession, count_tflite_ops

    calibration, scorer, _ = searched
    assert set(mixed.tflite.activations) == set(calibration.activations) - {HIDDEN}
    convert(outlier_onnx, mixed.tflite, tmp_path / "mixed.tflite")
    grids, weight_scales = tflite_parameters(tmp_path / "mixed.tflite")
    dense = next(w for w in calibration.plan.weights if w.node == "/9/Gemm")  # the one int8 op with weights left
    expected = weight_params(numpy_helper.to_array(initializer(outlier_onnx, dense.initializer)), dense.axis).scale
    assert len(weight_scales) == 1 and np.allclose(weight_scales[0], expected, rtol=1e-6)  # the convs' are float
    ours = {(np.float32(p.scale), int(p.zero_point)) for p in mixed.tflite.activations.values()}
    assert grids == ours  # every integer tensor in the file is on edgepack's grid, and each of ours is there
    assert (np.float32(calibration.activations[HIDDEN].scale), -128) not in grids  # the coarse grid is gone
    ops = count_tflite_ops(tmp_path / "mixed.tflite")  # image -> Q -> DQ -> float convs -> Q -> int8 rest -> DQ
    assert ops["QUANTIZE"] == 2 and ops["DEQUANTIZE"] == 2 and ops["CONV_2D"] == 2
    assert drop_pp(TFLiteSession(tmp_path / "mixed.tflite"), scorer) <= 0.5  # measured in LiteRT: 0.28 pp
    convert(outlier_onnx, calibration, tmp_path / "int8.tflite")
    assert drop_pp(TFLiteSession(tmp_path / "int8.tflite"), scorer) > 5.0  # plain int8 in LiteRT: 9.7 pp


def convert(model: onnx.ModelProto, calibration, out):
    from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite

    onnx.save(model, str(out.with_suffix(".onnx")))
    ranges = {t: tuple(float(v) for v in p.representable_range()) for t, p in calibration.activations.items()}
    convert_onnx_to_tflite(out.with_suffix(".onnx"), out, {"image": [1, 1, 8, 8]}, FakeQuantization(ranges, 8))


def drop_pp(session, scorer: RuntimeScorer) -> float:
    from edgepack.converters.verify import predict

    logits = predict(session, scorer.dataset, 1)["logits"]
    return (scorer.float_top1 - float(np.mean(logits.argmax(1) == scorer.dataset.labels))) * 100


def test_a_float_mean_takes_its_feeding_layer_float_too(searched, outlier_onnx, tmp_path):
    """TFLite gives MEAN (GlobalAveragePool) its input's grid when its output has no fake-quant: keeping the pool's
    output float alone would leave an int8 tensor on a grid edgepack never computed for it (the blocker, shown)."""
    from edgepack.calibration.sensitivity import plan_layers, tflite_float_layers, tflite_float_tensors, without_tensors

    calibration = searched[0]
    layers = plan_layers(outlier_onnx, calibration.plan)
    pool, feeder = (next(x for x in layers if x.name == name) for name in ("/7/GlobalAveragePool", "/3/Conv"))
    float_layers = tflite_float_layers(layers, [pool])
    assert list(float_layers) == [pool.name, feeder.name]
    assert "the converter gives its input's grid" in float_layers[feeder.name]
    record = mixed_precision_record(replace(searched[2], kept=[pool], tflite_float=float_layers), "onnx")
    decisions = [(r["layer"], r["onnx"], r["tflite"]) for r in record["layers"]]
    assert decisions == [(pool.name, "int16", "float"), (feeder.name, "int8", "float")]  # the difference, per layer
    convert(outlier_onnx, without_tensors(calibration, set(pool.tensors)), tmp_path / "alone.tflite")
    feeder_scale = np.float32(calibration.activations[feeder.activation].scale)
    assert mean_output(tmp_path / "alone.tflite") == (np.int8, feeder_scale)  # not the pool's own calibrated grid
    closed = without_tensors(calibration, tflite_float_tensors(layers, float_layers))
    convert(outlier_onnx, closed, tmp_path / "closed.tflite")
    assert mean_output(tmp_path / "closed.tflite") == (np.float32, None)
    grids, _ = tflite_parameters(tmp_path / "closed.tflite")
    assert grids == {(np.float32(p.scale), int(p.zero_point)) for p in closed.activations.values()}


def mean_output(path) -> tuple:
    from edgepack.converters.runtime import load_tflite_interpreter

    interpreter, _, _ = load_tflite_interpreter(path, default_delegates=False)
    op = next(op for op in interpreter._get_ops_details() if op["op_name"] == "MEAN")
    detail = interpreter.get_tensor_details()[int(op["outputs"][0])]
    scales = detail["quantization_parameters"]["scales"]
    return detail["dtype"], (np.float32(scales[0]) if len(scales) else None)


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)
