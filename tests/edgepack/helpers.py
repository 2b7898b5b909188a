"""Recipes for the tiny test models, written the way a user would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from edgepack.calibration.sources import digits_split

from tests.models import row_means

FAST_BENCH = {"runs": 5, "warmup": 1, "min_seconds": 0.0, "threads": 1}


def image_recipe(name: str, weights: Path, **extra) -> dict:
    recipe = {
        "name": name,
        "model": {"factory": f"tests.models:{name}", "weights": str(weights),
                  "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}], "output_names": ["logits"]},
        "data": {"source": "digits"},
        "bench": dict(FAST_BENCH),
    }  # fmt: skip
    return recipe | extra


def two_input_recipe(weights: Path, data_dir: Path) -> dict:
    """TwoInputNet on digits: the image and its row means, from a .npz the test writes."""
    images, labels = digits_split("test")
    npz = data_dir / "digits_two_inputs.npz"
    np.savez(npz, image=images, rows=row_means(images), labels=labels)
    return {
        "name": "two_input_net",
        "model": {"factory": "tests.models:two_input_net", "weights": str(weights),
                  "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}, {"name": "rows", "shape": [1, 8]}],
                  "output_names": ["logits"]},
        "data": {"source": "npz", "path": str(npz)},
        "bench": dict(FAST_BENCH),
    }  # fmt: skip


def write_recipe(folder: Path, recipe: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def artifact(results: dict, name: str) -> dict:
    return next(a for a in results["artifacts"] if a["name"] == name)
