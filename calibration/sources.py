"""Data sources behind one narrow contract: batches of ``{input_name: ndarray}`` in the ONNX layout, known length.

Evaluation uses the same sources with labels; image folders and callables load in source_loaders.py.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import DataError


def digits_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 1, 8, 8) float32 in [0, 1] and int64 labels; a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=0.2, random_state=seed, stratify=digits.target
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def load_digits_dataset(input_name: str, split: str = "test") -> ArrayDataset:
    images, labels = digits_split(split)
    return ArrayDataset({input_name: images}, labels)


def load_npz_dataset(path: Path, input_names: list[str]) -> ArrayDataset:
    """A .npz (or .npy for a single input) holding one array per input name, plus optional 'labels'."""
    if Path(path).is_dir():
        raise DataError(f"data file {path} is a directory; give a .npz (or .npy) file (data.path in the recipe)")
    if not Path(path).is_file():
        raise DataError(f"data file {path} does not exist (data.path in the recipe)")
    try:
        arrays = _read_arrays(Path(path), input_names)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"data file {path} is not a readable .npz/.npy file: {_npz_reason(e)}") from e
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise DataError(f"data file {path} has no array for input(s) {missing}; it holds {sorted(arrays)}")
    labels = arrays.get("labels")
    return ArrayDataset({n: arrays[n] for n in input_names}, None if labels is None else labels.astype(np.int64))


def _npz_reason(error: Exception) -> str:
    if "allow_pickle" in str(error):  # numpy's hint would advise loading pickles: never
        return "it holds pickled Python objects, which are never loaded; save plain numeric arrays with np.savez"
    if isinstance(error, zipfile.BadZipFile | EOFError):
        return f"it is truncated or not a zip archive ({error}); write it again with np.savez"
    return str(error)


def _read_arrays(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    if path.suffix == ".npy":
        return {input_names[0]: np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
