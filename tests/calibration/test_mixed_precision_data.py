"""Mixed precision is searched on calibration data only (issue 14, item 4): the search used the first evaluation
samples, so the accuracy reported after it was tuned on the data it is reported on. It now measures its plans on
calibration samples held out from fitting the ranges, against the float model's classes, and never reads the
evaluation (or verification) data: a context whose evaluation data raises on any read shows it."""

from __future__ import annotations

import numpy as np
import pytest
from edgepack.calibration.held_out import MIN_HELD_OUT, split_held_out
from edgepack.calibration.ptq import calibrate
from edgepack.calibration.sources import load_digits_dataset

from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import DataError
from edgepack.stages.quantize import QuantizeConfig
from edgepack.stages.quantize_mixed import mixed_calibrations


class EvaluationDataRaises:
    """A stage context whose evaluation and verification data must not be read."""

    task = "classification"
    batch_size = 1

    @property
    def eval_data(self):
        raise AssertionError("the mixed-precision search read the evaluation data")

    @property
    def verify_data(self):
        raise AssertionError("the mixed-precision search read the verification data")


def test_the_search_reads_held_out_calibration_samples_never_the_evaluation_data(conv_onnx):
    config = QuantizeConfig(method="minmax", samples=64, accuracy_target={"max_accuracy_drop_pp": 0.0})
    calibration_data = load_digits_dataset("image", "train")
    split = split_held_out(calibration_data, config.samples, "accuracy_target")
    assert len(split.fit) == 64 and len(split.held_out) == 128  # the samples after the fitted ones
    calibration = calibrate(conv_onnx, split.fit, config, held_out=split.held_out)
    mixed = mixed_calibrations(config, EvaluationDataRaises(), conv_onnx, calibration, "onnx-fp32", None, split)
    np.testing.assert_array_equal(mixed.scorer.dataset.inputs["image"], calibration_data.inputs["image"][64:192])
    assert mixed.search.samples == 128
    assert mixed.scorer.float_top1 == 1.0  # against the float model's own classes: labels are never needed
    for _, score in mixed.search.steps:  # each changed class costs 1/128 of the held-out samples
        assert abs(score.top1_drop_pp * 1.28 - round(score.top1_drop_pp * 1.28)) < 1e-6


def test_a_calibration_set_too_small_to_hold_out_is_named():
    tiny = ArrayDataset({"image": np.zeros((MIN_HELD_OUT + 7, 1, 8, 8), np.float32)})
    with pytest.raises(DataError, match=r"accuracy_target holds out part of the calibration data, which has 15 "
                       r"samples; at least 16 are needed"):  # fmt: skip
        split_held_out(tiny, 256, "accuracy_target")
    small = ArrayDataset({"image": np.zeros((50, 1, 8, 8), np.float32)})
    split = split_held_out(small, 256, "accuracy_target")
    assert (len(split.fit), len(split.held_out)) == (40, 10)  # the last 20% held out
