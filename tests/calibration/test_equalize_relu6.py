"""Cross-layer equalization through ReLU6 (issue 14, item 2): every Conv -> ReLU6 -> Conv pair of a mobile net was
skipped, so CLE equalized almost nothing there. The clip now follows each channel's scale (Relu, then Min with the
per-channel bound u / s_i: ONNX's Clip takes scalar bounds only). Checked on a small depthwise + ReLU6 net built
here: the float outputs of the equalized model equal the original's in onnxruntime and in the TFLite file, and the
int8 files of the equalized model are written and stay close to float in both runtimes. HardSwish is not equalized
(its +3 does not scale) and says so."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgepack.calibration.equalize import equalize_model
from edgepack.converters.onnx_to_tflite import convert_onnx_to_tflite
from torch import nn

from edgepack.core.dataset import ArrayDataset
from tests.converters.integer_check import cosine, quantize_both, run_onnx, run_tflite_each
from tests.converters.torch_check import calibrate_batchnorm, export

SHAPE = [1, 3, 16, 16]


def mobile_net() -> nn.Module:
    """stem conv + ReLU6 -> depthwise + ReLU6 -> linear 1x1 projection -> 1x1 expansion + HardSwish -> 1x1 + ReLU6."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16),
                         nn.Conv2d(16, 16, 1), nn.Hardswish(), nn.Conv2d(16, 8, 1), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(float ONNX path, equalized ONNX path, the equalization)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("relu6")
    net = calibrate_batchnorm(mobile_net(), SHAPE)
    with torch.no_grad():  # channels of very different ranges, as trained depthwise nets have
        net[4].weight.copy_(torch.logspace(-1, 1, 8))
    path = export(net.eval(), folder / "mobile.onnx", (torch.zeros(SHAPE),), ["image"], ["logits"])
    equalization = equalize_model(onnx.load(str(path)))
    equalized = folder / "mobile.equalized.onnx"
    onnx.save(equalization.model, str(equalized))
    return path, equalized, equalization


def feeds(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": (np.random.default_rng(seed).standard_normal([count, *SHAPE[1:]]) * 2).astype(np.float32)}


def test_relu6_pairs_are_equalized_with_a_per_channel_clip_and_hardswish_is_skipped(files):
    _, _, equalization = files
    pairs = [(p.first, p.second, p.through, p.clips_per_channel) for p in equalization.pairs]
    assert pairs == [("/0/Conv", "/3/Conv", ["Clip"], ["/2/Clip"]), ("/3/Conv", "/6/Conv", ["Clip"], ["/5/Clip"]),
                     ("/6/Conv", "/8/Conv", [], [])]  # was only the last: every ReLU6 pair was skipped  # fmt: skip
    assert [s["node"] for s in equalization.skipped] == ["/8/Conv"]
    assert "HardSwish '/9/HardSwish'" in equalization.skipped[0]["reason"]
    ops = [n.op_type for n in equalization.model.graph.node]
    assert ops.count("Min") == 2 and ops.count("Relu") == 2  # each equalized ReLU6 as Relu + per-channel Min
    assert ops.count("Clip") == 1 and ops.count("Constant") == 2  # the last ReLU6 (no conv after it) kept, bounds too
    spread_before, spread_after = equalization.pairs[1].spread_before, equalization.pairs[1].spread_after
    assert spread_after[0] < spread_before[0] / 3  # the depthwise channels' ranges drawn together


def test_float_outputs_are_unchanged_in_onnxruntime_and_tflite(files, tmp_path):
    path, equalized, _ = files
    data = feeds(8, 1)  # x2 normal: many ReLU6 outputs clip at 6, so a clip that did not follow would show
    original, after = run_onnx(path, data)["logits"], run_onnx(equalized, data)["logits"]
    np.testing.assert_allclose(after, original, rtol=1e-4, atol=1e-5 * np.abs(original).max())
    tflite = {}
    for name, source in (("original", path), ("equalized", equalized)):
        convert_onnx_to_tflite(source, tmp_path / f"{name}.tflite", {"image": SHAPE})
        tflite[name] = run_tflite_each(tmp_path / f"{name}.tflite", data)["logits"]
    np.testing.assert_allclose(tflite["equalized"], original, rtol=1e-4, atol=1e-5 * np.abs(original).max())
    np.testing.assert_allclose(tflite["original"], original, rtol=1e-4, atol=1e-5 * np.abs(original).max())


def test_int8_files_of_the_equalized_model_are_written_and_close_to_float(files):
    path, equalized, _ = files
    integer = quantize_both(equalized, ArrayDataset(feeds(64, 2)))
    data = feeds(16, 3)
    reference = run_onnx(path, data)["logits"]
    onnx_cos = cosine(reference, run_onnx(integer.onnx_path, data)["logits"])
    tflite_cos = cosine(reference, run_tflite_each(integer.tflite_path, data)["logits"])
    assert onnx_cos > 0.999 and tflite_cos > 0.999  # measured 0.99998 in both
