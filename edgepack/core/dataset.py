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


def load_input_value(path, name: str, shape: list[int]) -> np.ndarray:
    """An input's value from a .npy file (a sample rate, an initial state), checked against the input's shape."""
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"value of input {name!r}: cannot read {str(path)!r} as a .npy array ({e})") from e
    if list(value.shape) != list(shape):
        raise DataError(f"value of input {name!r} in {str(path)!r} has shape {list(value.shape)}; the input's is "
                        f"{list(shape)}: save exactly one value of the input's shape")  # fmt: skip
    return value


def in_model_shape(rows: np.ndarray, shape: list[int]) -> np.ndarray:
    """One sample (batch axis first, as datasets hold it) in the model's own shape, where the batch axis is elsewhere
    or absent (a [2, 1, 128] state, a scalar): with a batch of one, moving the batch axis is only a reshape. One
    dynamic dimension (-1 or 0, e.g. the [2, batch, 128] of a file with a free batch) takes the rest."""
    target = [d if d > 0 else -1 for d in shape]
    if rows.ndim == 0 or rows.shape[0] != 1 or list(rows.shape) == target or target.count(-1) > 1:
        return rows
    known = int(np.prod([d for d in target if d > 0]))
    fits = rows.size % known == 0 if -1 in target else rows.size == known
    return rows.reshape(target) if fits else rows


def real_rows(values: np.ndarray, count: int, rows: int) -> np.ndarray:
    """The ``count`` real samples of a batch of ``rows`` (padding cut). Nothing padded, the value stays whole: a
    tensor not batched on axis 0 (a scalar, a [2, 1, 128] state) has no sample rows to cut."""
    return values[:count] if count < rows else values
