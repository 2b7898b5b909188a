"""Evaluation data named by the recipe, and the held-out samples every artifact is verified on."""

from __future__ import annotations

import numpy as np

from edgepack.calibration.source_loaders import load_dataset
from edgepack.core.dataset import ArrayDataset, load_input_value
from edgepack.recipe import InputSpec, Recipe


def load_eval_data(recipe: Recipe) -> ArrayDataset | None:
    if recipe.data is None:
        return None
    inputs = recipe.model.inputs
    dataset, _ = load_dataset(recipe.data, {i.name: i.sample_shape for i in inputs}, {i.name: i.dtype for i in inputs})
    return dataset


def verification_samples(recipe: Recipe, eval_data: ArrayDataset | None) -> ArrayDataset:
    """A seeded subset of the evaluation data; seeded random inputs when the recipe gives no data."""
    rng = np.random.default_rng(recipe.seed)
    count = recipe.verify.samples
    if eval_data is not None:
        picked = rng.permutation(len(eval_data))[:count]
        return eval_data.take(np.sort(picked))
    inputs = {i.name: _made_up_input(rng, count, i) for i in recipe.model.inputs}
    return ArrayDataset(inputs)


def _made_up_input(rng: np.random.Generator, count: int, spec: InputSpec) -> np.ndarray:
    """``count`` samples (batch axis first): the input's given value in each, else seeded random values."""
    shape = [count, *spec.sample_shape[1:]]
    if spec.value is None:
        return _random_input(rng, shape, spec.dtype)
    value = load_input_value(spec.value, spec.name, spec.shape)
    return np.broadcast_to(value.reshape(spec.sample_shape), shape).astype(spec.dtype)


def _random_input(rng: np.random.Generator, shape: list[int], dtype: str) -> np.ndarray:
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.integers(0, 2, size=shape).astype(dtype)  # token-like ids; always valid indices


def stage_dataset(recipe: Recipe, source, *, stage: str, key: str, labels: bool = False) -> tuple[ArrayDataset, str]:
    """Data a stage learns from (calibration, fine-tuning): a .npz path or a data source block named by the stage's
    ``key``; by default the train split of the recipe's digits data. Never the evaluation data otherwise: accuracy is
    measured on samples the stage never saw."""
    from pathlib import Path

    from edgepack.calibration.data_config import DataConfig
    from edgepack.core.errors import DataError

    if isinstance(source, Path):
        source = DataConfig(source="npz", path=source)
    if source is None and recipe.data is not None and recipe.data.source == "digits":
        source = recipe.data
    if source is None:
        raise DataError(
            f"the {stage} stage needs '{key}' (a .npz path or a data source block), separate from the evaluation "
            "data so that accuracy is measured on samples it never saw"
        )
    inputs = recipe.model.inputs
    shapes, dtypes = {i.name: i.sample_shape for i in inputs}, {i.name: i.dtype for i in inputs}
    dataset, description = load_dataset(source, shapes, dtypes, split="train")  # digits: train; others ignore it
    if labels and dataset.labels is None:
        raise DataError(
            f"the {stage} stage trains on {description}, which has no labels; add an integer 'labels' array to the "
            ".npz (one per sample), or use a labelled source"
        )
    return dataset, description
