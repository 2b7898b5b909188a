"""Evaluation data named by the recipe, and the held-out samples every artifact is verified on."""

from __future__ import annotations

import numpy as np

from calibration.sources import ArrayDataset, check_dataset, load_digits_dataset, load_npz_dataset
from edgepack.errors import DataError
from edgepack.recipe import DataSourceKind, Recipe


def load_eval_data(recipe: Recipe) -> ArrayDataset | None:
    data = recipe.data
    if data is None:
        return None
    names = [i.name for i in recipe.model.inputs]
    if data.source == DataSourceKind.DIGITS:
        if len(names) != 1:
            raise DataError(f"the digits data feeds one image input; the model has inputs {names}")
        dataset = load_digits_dataset(names[0], split="test")
        source = "digits (test split)"
    else:
        dataset = load_npz_dataset(data.path, names)
        source = str(data.path)
    check_dataset(
        dataset, {i.name: i.shape for i in recipe.model.inputs}, {i.name: i.dtype for i in recipe.model.inputs}, source
    )
    if data.max_samples is not None and data.max_samples < len(dataset):
        dataset = dataset.take(np.arange(data.max_samples))
    return dataset


def verification_samples(recipe: Recipe, eval_data: ArrayDataset | None) -> ArrayDataset:
    """A seeded subset of the evaluation data; seeded random inputs when the recipe gives no data."""
    rng = np.random.default_rng(recipe.seed)
    count = recipe.verify.samples
    if eval_data is not None:
        picked = rng.permutation(len(eval_data))[:count]
        return eval_data.take(np.sort(picked))
    inputs = {i.name: _random_input(rng, [count, *i.shape[1:]], i.dtype) for i in recipe.model.inputs}
    return ArrayDataset(inputs)


def _random_input(rng: np.random.Generator, shape: list[int], dtype: str) -> np.ndarray:
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.integers(0, 2, size=shape).astype(dtype)  # token-like ids; always valid indices
