"""The held-out part of the calibration data: what ``method: auto`` scores its candidate ranges on and what the
mixed-precision search measures its plans on. Never the evaluation data: the accuracy reported after either is
measured on samples neither saw.

The ranges are fitted on the first ``samples`` calibration samples (as without a held-out part); the samples after
them are held out when there are at least ``MIN_HELD_OUT`` (at most ``MAX_HELD_OUT`` are used). A calibration set no
larger than ``samples`` is cut instead: its last ``HELD_OUT_FRACTION`` (at least ``MIN_HELD_OUT`` samples) is held
out and the ranges are fitted on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from edgepack.calibration.collect import MIN_CALIBRATION_SAMPLES

from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import DataError

MIN_HELD_OUT = 8
MAX_HELD_OUT = 128
HELD_OUT_FRACTION = 0.2


@dataclass
class CalibrationSplit:
    fit: ArrayDataset  # the samples the ranges are fitted on
    held_out: ArrayDataset  # disjoint from ``fit``

    def describe(self) -> str:
        return f"{len(self.held_out)} held-out calibration samples (ranges fitted on {len(self.fit)} others)"


def can_hold_out(dataset: ArrayDataset) -> bool:
    return len(dataset) >= MIN_CALIBRATION_SAMPLES + MIN_HELD_OUT


def split_held_out(dataset: ArrayDataset, samples: int, purpose: str) -> CalibrationSplit:
    """``samples``: how many the ranges are fitted on at most (the scheme's ``samples``); ``purpose`` names what
    needs the held-out part, for the error raised when the data is too small for one."""
    count = len(dataset)
    if not can_hold_out(dataset):
        raise DataError(f"{purpose} holds out part of the calibration data, which has {count} samples; at least "
                        f"{MIN_CALIBRATION_SAMPLES + MIN_HELD_OUT} are needed ({MIN_CALIBRATION_SAMPLES} to fit the "
                        f"ranges, {MIN_HELD_OUT} held out): give more calibration samples")  # fmt: skip
    if count - samples >= MIN_HELD_OUT:
        stop = min(count, samples + MAX_HELD_OUT)
        return CalibrationSplit(dataset.head(samples), dataset.take(np.arange(samples, stop)))
    held = min(MAX_HELD_OUT, max(MIN_HELD_OUT, int(count * HELD_OUT_FRACTION)))
    held = min(held, count - MIN_CALIBRATION_SAMPLES)
    return CalibrationSplit(dataset.head(count - held), dataset.take(np.arange(count - held, count)))
