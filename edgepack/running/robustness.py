"""Robustness: top-1 of each artifact under input noise and a brightness/contrast shift, in its own runtime.

A quantized model can match its float parent on clean data and still fall apart on noisy input (its activation
ranges were calibrated on clean data); measuring every artifact under the same perturbations makes that visible.
The same seeded noise pattern is scaled to each SNR, so the levels differ only in strength.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepack.core.dataset import ArrayDataset


class RobustnessConfig(BaseModel):
    """The recipe's ``robustness:`` block; null turns it off. It runs for classification with labelled data."""

    model_config = ConfigDict(extra="forbid")
    snr_db: list[float] = Field(
        [30.0, 20.0, 10.0], description="Gaussian noise levels: signal-to-noise ratio of each sample, in dB."
    )
    brightness: float | None = Field(
        0.1, description="Add this fraction of the input's value range to every value (clipped to the range)."
    )
    contrast: float | None = Field(
        0.8, gt=0, description="Scale each sample about its own mean by this factor (clipped to the range)."
    )
    max_samples: int | None = Field(
        1000, gt=0, description="Use at most this many evaluation samples (the first ones); null uses them all."
    )


def applies_to(dataset: ArrayDataset | None, classification: bool) -> bool:
    """Top-1 needs labels, and only float inputs can be perturbed."""
    if dataset is None or dataset.labels is None or not classification:
        return False
    return any(np.issubdtype(a.dtype, np.floating) for a in dataset.inputs.values())


def perturbed_datasets(config: RobustnessConfig, dataset: ArrayDataset, seed: int) -> list[tuple[dict, ArrayDataset]]:
    """(condition, dataset) pairs: one per noise level, then brightness and contrast when configured."""
    rng = np.random.default_rng(seed)
    noise = {name: rng.standard_normal(a.shape).astype(a.dtype) for name, a in _float_inputs(dataset).items()}
    pairs = [
        (_condition("gaussian_noise", f"noise {snr:g} dB", snr), _noisy(dataset, noise, snr)) for snr in config.snr_db
    ]
    if config.brightness is not None:
        label = f"brightness {config.brightness:+g}"
        pairs.append((_condition("brightness", label, config.brightness), _brighter(dataset, config.brightness)))
    if config.contrast is not None:
        label = f"contrast x{config.contrast:g}"
        pairs.append((_condition("contrast", label, config.contrast), _contrasted(dataset, config.contrast)))
    return pairs


def _condition(kind: str, label: str, value: float) -> dict:
    return {"kind": kind, "label": label, "value": float(value)}


def _float_inputs(dataset: ArrayDataset) -> dict[str, np.ndarray]:
    return {name: a for name, a in dataset.inputs.items() if np.issubdtype(a.dtype, np.floating)}


def _replaced(dataset: ArrayDataset, arrays: dict[str, np.ndarray]) -> ArrayDataset:
    return ArrayDataset({**dataset.inputs, **arrays}, dataset.labels)


def _per_sample(array: np.ndarray, reduce) -> np.ndarray:
    """A per-sample statistic shaped to broadcast back over the sample's elements."""
    flat = array.reshape(len(array), -1).astype(np.float64)
    return reduce(flat, axis=1).reshape((len(array),) + (1,) * (array.ndim - 1))


def _noisy(dataset: ArrayDataset, noise: dict[str, np.ndarray], snr_db: float) -> ArrayDataset:
    arrays = {}
    for name, array in _float_inputs(dataset).items():
        signal_power = _per_sample(np.square(array), np.mean)
        sigma = np.sqrt(signal_power / 10 ** (snr_db / 10))
        arrays[name] = (array + sigma * noise[name]).astype(array.dtype)
    return _replaced(dataset, arrays)


def _brighter(dataset: ArrayDataset, shift: float) -> ArrayDataset:
    arrays = {}
    for name, array in _float_inputs(dataset).items():
        low, high = float(array.min()), float(array.max())
        arrays[name] = np.clip(array + shift * (high - low), low, high).astype(array.dtype)
    return _replaced(dataset, arrays)


def _contrasted(dataset: ArrayDataset, factor: float) -> ArrayDataset:
    arrays = {}
    for name, array in _float_inputs(dataset).items():
        mean = _per_sample(array, np.mean)
        arrays[name] = np.clip(mean + factor * (array - mean), array.min(), array.max()).astype(array.dtype)
    return _replaced(dataset, arrays)
