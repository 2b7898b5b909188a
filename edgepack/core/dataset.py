"""The data contract every package reads: samples stacked along axis 0, one array per model input (ONNX layout),
optional integer labels, a known length. Sources (files, folders, callables, digits) produce it in calibration."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgepack.core.errors import DataError

# In the manifest's terms (x = (raw * scale - mean) / std); each tensor's own layout is in the manifest too.
DIGITS_PREPROCESSING = {
    "description": "scikit-learn load_digits: 8x8 grayscale images, integer pixel values 0..16",
    "resize": [8, 8],
    "color": "grayscale",
    "scale": 1 / 16,
    "mean": [0.0],
    "std": [1.0],
}


@dataclass
class ArrayDataset:
    """Samples stacked along axis 0, one array per model input, optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield {name: array[start : start + batch_size] for name, array in self.inputs.items()}

    def head(self, count: int) -> ArrayDataset:
        """The first ``count`` samples as views (no copy: calibration memory must not grow with the sample count)."""
        labels = None if self.labels is None else self.labels[:count]
        return ArrayDataset({name: a[:count] for name, a in self.inputs.items()}, labels)

    def take(self, indices: np.ndarray) -> ArrayDataset:
        labels = None if self.labels is None else self.labels[indices]
        return ArrayDataset({name: a[indices] for name, a in self.inputs.items()}, labels)


def check_dataset(dataset: ArrayDataset, shapes: dict[str, list[int]], dtypes: dict[str, str], source: str) -> None:
    """Every input present, per-sample shape as the model expects, finite values, labels aligned."""
    if len(dataset) == 0:
        raise DataError(f"{source}: the data holds no samples")
    for name, shape in shapes.items():
        array = dataset.inputs[name]
        if list(array.shape[1:]) != list(shape[1:]):
            raise DataError(
                f"{source}: input {name!r} samples have shape {list(array.shape[1:])}, the model "
                f"expects {list(shape[1:])} (model.inputs shape {shape} without the batch axis)"
            )
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise DataError(f"{source}: input {name!r} contains NaN or Inf values")
        dataset.inputs[name] = array.astype(dtypes[name], copy=False)
    if dataset.labels is not None and len(dataset.labels) != len(dataset):
        raise DataError(f"{source}: {len(dataset.labels)} labels for {len(dataset)} samples")
