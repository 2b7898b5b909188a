"""Attention masks: a padded BERT's -3.4e38 mask neither sets the Softmax input's grid nor gets one of its own, so
int8 keeps the attention, and LiteRT no longer aborts the process on the converted file."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
import torch
from edgepack.calibration.attention_masks import FLAG_LIMIT, SoftmaxInputEstimator, flag_tensors
from edgepack.calibration.bias_correction import correct_biases, with_corrected_model
from edgepack.calibration.estimators import MinMaxEstimator
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
from edgepack.converters.qdq import write_qdq_model
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from tests.converters.arch_sequence import MiniBert
from tests.converters.integer_check import IntegerFiles, cosine, run_onnx, run_tflite_each
from tests.converters.torch_check import export
from tests.edgepack.test_cli import edgepack

BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
LENGTH = 16
FINFO_MIN = float(np.finfo(np.float32).min)


def test_a_softmax_input_stops_at_the_lowest_row_maximum_minus_the_zero_weight_margin():
    scores = np.array([[[2.0, 1.0, -1.0, FINFO_MIN], [0.5, -3.0, FINFO_MIN, FINFO_MIN]]], np.float32)
    estimator = SoftmaxInputEstimator(MinMaxEstimator(), axis=-1, levels=256)
    estimator.observe(scores)
    margin = math.log(2 * 256 * 4)  # 4 positions: all of them together under half a step of 1/256
    assert estimator.range() == pytest.approx((0.5 - margin, 2.0))
    assert estimator.inner.range()[0] == pytest.approx(0.5 - margin)  # the inner estimator never saw -3.4e38


def test_a_softmax_input_without_a_mask_keeps_its_plain_range_and_fully_masked_rows_do_not_lower_the_floor():
    scores = np.array([[1.0, -2.0, 0.5], [FINFO_MIN] * 3], np.float32)
    estimator = SoftmaxInputEstimator(MinMaxEstimator(), axis=-1, levels=256)
    estimator.observe(scores[:1])
    assert estimator.range() == (-2.0, 1.0)
    estimator.observe(scores[1:])  # a row with nothing to attend to: its maximum is a flag, its values the floor
    assert estimator.range() == pytest.approx((1.0 - math.log(2 * 256 * 3), 1.0))


def test_only_ranges_beyond_the_flag_limit_are_flags():
    flags = flag_tensors({"mask": (FINFO_MIN, 0.0), "hf_old_mask": (-1e4, 0.0), "logits": (-30.0, 40.0)})
    assert list(flags) == ["mask"] and "attention mask" in flags["mask"]
    assert FLAG_LIMIT == 1e6


def padded_bert_data(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 1000, (count, LENGTH)).astype(np.int64)
    mask = (np.arange(LENGTH)[None] < LENGTH - rng.integers(0, 8, (count, 1))).astype(np.int64)  # 0-7 padded
    segments = np.broadcast_to((np.arange(LENGTH) >= LENGTH // 2).astype(np.int64), (count, LENGTH)).copy()
    return dict(zip(BERT_INPUTS, (ids, mask, segments), strict=True))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """MiniBert with HF BERT's additive mask ((1 - mask) x finfo.min), legacy export, and a padded calibration set."""
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    examples = tuple(torch.from_numpy(a) for a in padded_bert_data(1).values())
    path = export(MiniBert(layers=1).eval(), folder / "bert.onnx", examples, BERT_INPUTS, ["hidden", "pooled"])
    np.savez(folder / "calib.npz", **padded_bert_data(64))
    return path, folder / "calib.npz"


def test_calibration_leaves_the_mask_float_and_gives_the_softmax_input_a_grid_for_its_scores(bert):
    model = onnx.load(str(bert[0]))
    calibration = calibrate(model, ArrayDataset(padded_bert_data(64)), QuantScheme())
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert [producers[t] for t in calibration.kept_float] == ["Mul"]  # (1 - mask) * finfo.min
    softmax_input = next(n.input[0] for n in model.graph.node if n.op_type == "Softmax")
    low, high = calibration.ranges[softmax_input]
    assert -30 < low < 0 < high < 30  # measured about [-11, 1.5]: scores, not the mask
    assert all(t not in calibration.activations for t in calibration.kept_float)
    assert all(p.scale.max() < 1.0 for p in calibration.activations.values())


@pytest.mark.parametrize("to", ["onnx", "tflite"])
def test_padded_bert_quantizes_to_int8_in_both_runtimes(bert, tmp_path, to):
    """The CLI runs in its own process: before the rule, LiteRT aborted it (SIGABRT) allocating the int8 file."""
    out = tmp_path / f"bert.int8.{to}"
    done = edgepack("convert", str(bert[0]), "--to", to, "--out", str(out), "--precision", "int8", "--calib",
                    str(bert[1]))  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    cosine = float(re.search(r"cosine (\d\.\d+)", done.stdout).group(1))
    assert cosine > 0.998  # measured 0.9994 in both; 0.9985 in onnxruntime with the mask inside the grid
    scales = _onnx_scales(out) if to == "onnx" else _tflite_scales(out)
    assert scales and max(scales) < 1.0  # no grid spread over a mask


def _onnx_scales(path) -> list[float]:
    model = onnx.load(str(path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [float(initializers[n.input[1]].max()) for n in model.graph.node if n.op_type == "QuantizeLinear"]


def _tflite_scales(path) -> list[float]:
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()  # read only: nothing allocated
    return [float(s) for d in details for s in d["quantization_parameters"]["scales"]
            if d["dtype"] in (np.int8, np.int16)]  # fmt: skip


METHODS = ["minmax", "moving_average", "percentile", "entropy", "mse"]


@pytest.fixture(scope="module")
def masked_berts(tmp_path_factory):
    """HF BERT's finfo.min mask and the -inf one of masked_fill (torch's SDPA export writes the same Where)."""
    folder = tmp_path_factory.mktemp("masked_berts")
    examples = tuple(torch.from_numpy(a) for a in padded_bert_data(1).values())
    paths = {}
    for mask in ("finfo", "-inf"):
        torch.manual_seed(0)
        module = MiniBert(layers=1, mask=mask).eval()
        paths[mask] = export(module, folder / f"bert_{mask}.onnx", examples, BERT_INPUTS, ["hidden", "pooled"])
    return paths


@pytest.mark.parametrize("mask", ["finfo", "-inf"])
@pytest.mark.parametrize("method,bias_correction", [(m, False) for m in METHODS] + [("percentile", True),
                                                                                   ("minmax", True)])  # fmt: skip
def test_every_method_quantizes_a_padded_bert_to_both_files(masked_berts, tmp_path, mask, method, bias_correction):
    """Before: the histogram methods crashed on the -inf mask (NaN bins: 'list' argument must have no negative
    elements), and a clipping method could give a rarely padded mask a grid. Each file is measured in its runtime."""
    files = quantize_with(masked_berts[mask], tmp_path, QuantScheme(method=method, bias_correction=bias_correction))
    assert list(files.calibration.kept_float) and all(
        p.scale.max() < 1.0 for p in files.calibration.activations.values()
    )
    feeds = padded_bert_data(16, seed=1)
    reference = run_onnx(masked_berts[mask], feeds)
    for produced in (run_onnx(files.onnx_path, feeds), run_tflite_each(files.tflite_path, feeds)):
        for name, values in reference.items():
            assert cosine(values, produced[name]) >= 0.99, (name, cosine(values, produced[name]))


def quantize_with(float_onnx, folder, scheme: QuantScheme) -> IntegerFiles:
    """integer_check.quantize_both with a scheme of its own, bias correction included (as the quantize stage)."""
    model = onnx.load(str(float_onnx))
    data = ArrayDataset(padded_bert_data(64))
    calibration = calibrate(model, data, scheme)
    if scheme.bias_correction:
        correction = correct_biases(model, calibration.plan, data, batch_size=1)
        model, calibration = correction.model, with_corrected_model(calibration, correction.model)
    float_path, onnx_path, tflite_path = folder / "float.onnx", folder / "int8.onnx", folder / "int8.tflite"
    onnx.save(model, str(float_path))
    write_qdq_model(model, onnx_path, calibration.plan, calibration.activations, constants=calibration.constants)
    shapes = {name: [1, LENGTH] for name in BERT_INPUTS}
    convert_onnx_to_tflite(float_path, tflite_path, shapes, FakeQuantization(calibration.fake_quant_ranges(), 8))
    return IntegerFiles(onnx_path, tflite_path, calibration)


@pytest.mark.parametrize("flag", [FINFO_MIN, -math.inf])
@pytest.mark.parametrize("method", METHODS)
def test_a_rarely_padded_mask_stays_float_whatever_the_method(method, flag):
    """One padded position in 12800. Flags are decided on the exact extremes, for every method: a histogram has
    no bin for -inf, so its range alone would be [0, 0], a grid on which int8 stops masking."""
    node, value = onnx.helper.make_node, onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node("Cast", ["mask"], ["keep"], to=onnx.TensorProto.BOOL),
         node("Where", ["keep", "zero", "lowest"], ["additive"]),
         node("Add", ["scores", "additive"], ["masked"]), node("Softmax", ["masked"], ["weights"])],
        "rare_mask", [value(n, onnx.TensorProto.FLOAT, ["n", 64]) for n in ("scores", "mask")],
        [value("weights", onnx.TensorProto.FLOAT, ["n", 64])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
         numpy_helper.from_array(np.array(flag, np.float32), "lowest")])  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    mask = np.ones((200, 64), np.float32)
    mask[7, 63] = 0.0
    data = ArrayDataset({"scores": rng.standard_normal((200, 64)).astype(np.float32), "mask": mask})
    calibration = calibrate(model, data, QuantScheme(method=method))
    assert "additive" in calibration.kept_float and "additive" not in calibration.activations
