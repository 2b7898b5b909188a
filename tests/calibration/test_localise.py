"""Per-layer error localisation measured in onnxruntime and LiteRT: one entry per quantized activation under its
ONNX node, 16-bit activations measurably finer than 8-bit, and a damaged range found at the layer that has it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgepack.calibration.localise import SQNR_LIMIT_DB, SqnrSums, onnx_layer_sqnr
from edgepack.calibration.plan import plan_quantization
from edgepack.calibration.ptq import QuantScheme, activation_parameters, calibrate
from edgepack.calibration.sources import load_digits_dataset
from edgepack.converters.qdq import write_qdq_model
from onnx import TensorProto, helper

import edgepack
from edgepack.core.dataset import ArrayDataset
from edgepack.recipe import parse_recipe
from tests.edgepack.helpers import artifact, image_recipe

STAGES = [{"stage": "export", "exporter": "legacy"}, {"stage": "quantize"},
          {"stage": "quantize", "precision": "int16x8"}]  # fmt: skip
# The digits example: image -> Conv+Relu -> depthwise Conv+ReLU6 (Clip) -> Conv+Relu -> MaxPool -> GAP -> Flatten
# -> Gemm. The plan quantizes after each fused activation; MaxPool/Flatten reuse their input's grid.
DIGITS_LAYERS = [("image", None), ("/2/Relu", "Relu"), ("/5/Clip", "Clip"), ("/8/Relu", "Relu"),
                 ("/9/MaxPool", "MaxPool"), ("/10/GlobalAveragePool", "GlobalAveragePool"),
                 ("/11/Flatten", "Flatten"), ("/12/Gemm", "Gemm")]  # fmt: skip
TFLITE_OPS = ["QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_weights):
    recipe = image_recipe("digits_example", trained_weights("digits_example"), stages=STAGES) | {"bench": None}
    recipe["verify"] = {"samples": 128}
    return edgepack.pack(parse_recipe(recipe), out=tmp_path_factory.mktemp("localise") / "run", quiet=True)


@pytest.fixture(scope="module")
def float_model(run) -> onnx.ModelProto:
    return onnx.load(str(run.run_dir / artifact(run.results, "onnx-fp32")["path"]))


def sqnr_by_layer(results: dict, name: str) -> dict[str, float]:
    return {row["layer"]: row["sqnr_db"] for row in artifact(results, name)["layer_sqnr"]}


def test_sqnr_is_summed_over_batches():
    sums = SqnrSums()
    sums.add(np.array([1.0, 2.0]), np.array([1.0, 1.0]))  # signal 5, error 1
    sums.add(np.array([[3.0]]), np.array([[3.0]]))  # signal 9, no error
    assert sums.sqnr_db() == pytest.approx(10 * np.log10(14.0))
    assert SqnrSums(signal=1.0).sqnr_db() == SQNR_LIMIT_DB  # exact: finite, so results.json stays valid JSON


@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_one_entry_per_quantized_activation_under_its_onnx_node(run, float_model, precision):
    plan = plan_quantization(float_model)
    onnx_a = artifact(run.results, f"onnx-{precision}")
    assert set(onnx_a["details"]["activations"]) == set(plan.quantized_tensors())
    assert [(row["layer"], row["op"]) for row in onnx_a["layer_sqnr"]] == DIGITS_LAYERS
    nodes = {node.name: node.op_type for node in float_model.graph.node}
    assert all(nodes[layer] == op for layer, op in DIGITS_LAYERS[1:])


@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_tflite_layers_measured_in_litert_agree_with_onnx(run, precision):
    """Same grids, same kernels' arithmetic: each TFLite layer's SQNR is its ONNX twin's (Flatten is no TFLite op)."""
    tflite_rows = artifact(run.results, f"tflite-{precision}")["layer_sqnr"]
    assert [row["op"] for row in tflite_rows] == TFLITE_OPS
    onnx_rows = [row for row in artifact(run.results, f"onnx-{precision}")["layer_sqnr"] if row["op"] != "Flatten"]
    tflite_db, onnx_db = [row["sqnr_db"] for row in tflite_rows], [row["sqnr_db"] for row in onnx_rows]
    assert np.allclose(tflite_db, onnx_db, atol=1.0)


def test_16_bit_activations_are_finer_where_activations_are_the_error(run):
    """Both files keep 8-bit weights, so only the input (activation error alone) gains the ~48 dB of 8 more bits;
    no layer may lose."""
    int8, int16 = sqnr_by_layer(run.results, "onnx-int8"), sqnr_by_layer(run.results, "onnx-int16x8")
    assert int16["image"] > int8["image"] + 30
    assert all(int16[layer] >= int8[layer] - 0.5 for layer in int8)


def test_16_bit_activations_gain_over_30_db_on_every_layer_without_weights(tmp_path):
    #  x -> Relu -> MaxPool -> Sigmoid -> y   (no weights: activation quantization is the whole error)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], name="pool"),
             helper.make_node("Sigmoid", ["p"], ["y"], name="sigmoid")]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    data = ArrayDataset({"x": np.random.default_rng(0).standard_normal((64, 1, 2, 4, 4)).astype(np.float32)[:, 0]})
    figures = {}
    for precision in ("int8", "int16x8"):
        calibration = calibrate(model, data, QuantScheme(precision=precision))
        write_qdq_model(model, tmp_path / f"{precision}.onnx", calibration.plan, calibration.activations)
        quantized = onnx.load(str(tmp_path / f"{precision}.onnx"))
        rows = onnx_layer_sqnr(model, quantized, list(calibration.activations), data, batch_size=1)
        figures[precision] = {row["layer"]: row["sqnr_db"] for row in rows}
    assert list(figures["int8"]) == ["x", "relu", "pool", "sigmoid"]
    assert all(figures["int16x8"][layer] > figures["int8"][layer] + 30 for layer in figures["int8"])


@pytest.fixture(scope="module")
def min_max_and_percentile_60(float_model):
    """Two calibrations of the digits model: min-max, and percentile 60 (clips 40% of each tensor's values)."""
    train = load_digits_dataset("image", "train")
    good = calibrate(float_model, train, QuantScheme())
    return good, calibrate(float_model, train, QuantScheme(method="percentile", percentile=60))


def sqnr_with_damaged_range(model, calibrations, tmp_path, damaged: str | None) -> dict[str, float]:
    """SQNR per layer when ``damaged``'s range comes from the percentile-60 calibration, every other from min-max."""
    good, bad = calibrations
    ranges = good.ranges | ({damaged: bad.ranges[damaged]} if damaged else {})
    activations = activation_parameters(good.plan, ranges, good.scheme)
    path = tmp_path / f"damaged_{damaged is not None}.onnx"
    write_qdq_model(model, path, good.plan, activations)
    test = load_digits_dataset("image", "test").take(np.arange(128))
    rows = onnx_layer_sqnr(model, onnx.load(str(path)), list(activations), test, batch_size=1)
    return {row["layer"]: row["sqnr_db"] for row in rows}


@pytest.mark.parametrize("damaged, layer", [("image", "image"), ("/5/Clip_output_0", "/5/Clip"),
                                            ("logits", "/12/Gemm")])  # fmt: skip
def test_a_damaged_range_is_found_at_its_layer(float_model, min_max_and_percentile_60, tmp_path, damaged, layer):
    clean = sqnr_with_damaged_range(float_model, min_max_and_percentile_60, tmp_path, None)
    figures = sqnr_with_damaged_range(float_model, min_max_and_percentile_60, tmp_path, damaged)
    order = list(figures)
    assert all(figures[name] == clean[name] for name in order[: order.index(layer)])  # before the damage: untouched
    assert figures[layer] < 10 and clean[layer] - figures[layer] > 20
    assert next(name for name in order if figures[name] < 10) == layer  # the first layer that drops is the culprit
    if layer == "/12/Gemm":
        assert min(figures, key=figures.get) == layer  # nothing after it: it is also the worst


def test_report_names_the_worst_layers(run):
    report = (run.run_dir / "report.md").read_text()
    for name in ("onnx-int8", "tflite-int8", "onnx-int16x8", "tflite-int16x8"):
        rows = sorted(artifact(run.results, name)["layer_sqnr"], key=lambda row: row["sqnr_db"])
        named = ", ".join(f"{row['layer']} {row['sqnr_db']:.1f} dB" for row in rows[:3])
        assert f"**{name}** lowest SQNR: {named}" in report
