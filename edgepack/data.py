"""Evaluation data named by the recipe, and the held-out samples every artifact is verified on."""

from __future__ import annotations

import numpy as np

from calibration.source_loaders import load_dataset
from calibration.sources import ArrayDataset
from edgepack.recipe import Recipe


def load_eval_data(recipe: Recipe) -> ArrayDataset | None:
    if recipe.data is None:
        return None
    inputs = recipe.model.inputs
    dataset, _ = load_dataset(recipe.data, {i.name: i.shape for i in inputs}, {i.name: i.dtype for i in inputs})
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
