"""method auto (issue 14, item 1): per activation tensor, the range of whichever method quantizes it with the least
squared error on calibration samples held out from fitting the ranges; a method the user sets is used exactly."""

from __future__ import annotations

import numpy as np
import pytest
from edgepack.calibration.collect import collect_ranges
from edgepack.calibration.estimators import make_estimator
from edgepack.calibration.held_out import split_held_out
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.sources import load_digits_dataset

from edgepack.core.dataset import ArrayDataset


def test_auto_takes_the_plan_closest_to_float_on_held_out_samples(conv_onnx):
    data = load_digits_dataset("image", "train")
    calibration = calibrate(conv_onnx, data, QuantScheme(samples=64))
    record = calibration.range_methods
    assert record["scored_on"].startswith("128 held-out calibration samples")
    fit = split_held_out(data, 64, "auto").fit
    for tensor, method in record["tensors"].items():
        if method != "entropy":  # entropy's own estimator leaves zeros out; auto's shared histogram keeps them
            alone = collect_ranges(conv_onnx, [tensor], fit, lambda _, m=method: make_estimator(m))[tensor]
            np.testing.assert_allclose(calibration.ranges[tensor], alone, rtol=1e-6)
    assert sum(record["counts"].values()) == len(calibration.plan.activations)
    errors = record["output_error"]  # each whole-model plan run on held-out samples: the closest to float is kept,
    closest = min(errors, key=errors.get)  # a plan that clips only when clearly closer than min-max
    minmax = errors.get("minmax", errors["per_tensor"])
    assert record["plan"] == (closest if errors[closest] <= 0.8 * minmax else "minmax") and "per_tensor" in errors
    assert errors[record["plan"]] <= minmax  # never worse than min-max there


@pytest.mark.parametrize(("mse_error", "kept"), [(0.86, "minmax"), (0.74, "mse")])
def test_a_plan_that_clips_replaces_minmax_only_when_clearly_closer_on_held_out_samples(monkeypatch, mse_error,
                                                                                         kept):  # fmt: skip
    # measured on EfficientNet-Lite0: mse 14% closer than min-max on held-out samples, 5x worse KL on new photos
    from edgepack.calibration import auto_ranges

    candidates = {"minmax": {"t": (-4.0, 4.0)}, "percentile": {"t": (-3.0, 3.0)}, "mse": {"t": (-2.0, 2.0)},
                  "entropy": {"t": (-2.5, 2.5)}}  # fmt: skip
    choice = auto_ranges.RangeChoice({"t": (-3.0, 3.0)}, {"t": "percentile"}, held_out=8, candidates=candidates)
    errors = {"per_tensor": 0.95, "minmax": 1.0, "mse": mse_error, "entropy": 2.0}
    monkeypatch.setattr(auto_ranges, "held_out_errors", lambda model, builders, *_: {k: errors[k] for k in builders})
    picked = auto_ranges.pick_plan(None, choice, None, lambda ranges: None, classifier=True)
    assert picked.plan == kept and picked.ranges == candidates[kept] and set(picked.methods.values()) == {kept}
    assert picked.plans == errors  # all recorded, the choice explained by them


def test_a_method_the_user_sets_is_used_for_every_tensor(conv_onnx):
    data = load_digits_dataset("image", "train").head(64)
    calibration = calibrate(conv_onnx, data, QuantScheme(method="mse"))
    assert calibration.range_methods == {}
    expected = collect_ranges(conv_onnx, calibration.plan.activations, data, lambda _: make_estimator("mse"))
    assert calibration.ranges == expected  # all 64 samples, none held out


def test_auto_on_too_few_samples_to_hold_out_falls_back_to_minmax_and_says_so(conv_onnx):
    data = ArrayDataset({"image": load_digits_dataset("image", "train").inputs["image"][:12]})
    calibration = calibrate(conv_onnx, data, QuantScheme())
    assert calibration.range_methods == {"fallback": "minmax for every tensor: 12 calibration samples are too few to "
                                                     "hold some out"}  # fmt: skip
    assert calibration.ranges == calibrate(conv_onnx, data, QuantScheme(method="minmax")).ranges


def test_channels_weigh_by_the_squared_weights_the_next_layers_read_them_with():
    from edgepack.calibration.auto_ranges import channel_weights
    from onnx import TensorProto, helper, numpy_helper

    depthwise = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(4, 1, 1, 1)  # channel c -> output c
    dense = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]], np.float32)  # transB: [out, in]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw"], ["y"], group=4), helper.make_node("Flatten", ["y"], ["f"]),
         helper.make_node("Gemm", ["g", "dense"], ["z"], transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1]),
              helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(depthwise, "dw"), numpy_helper.from_array(dense, "dense")])  # fmt: skip
    weights = channel_weights(helper.make_model(graph), ["x", "y", "g"])
    np.testing.assert_allclose(weights["x"], np.array([1, 4, 9, 16]) / 7.5)  # normalised to mean 1
    np.testing.assert_allclose(weights["g"], [1.0, 1.0])  # column sums of squares: 3 and 3
    assert "y" not in weights  # read by no Conv/Gemm: its channels weigh the same
