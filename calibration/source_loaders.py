"""Loading every kind of data source into an ArrayDataset in the ONNX layout: the one entry point is
``load_dataset``; evaluation (the recipe's ``data``) and calibration (the quantize stage) both call it."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from edgepack.calibration.data_config import DataConfig, DataSourceKind, Preprocessing
from edgepack.calibration.sources import load_digits_dataset, load_npz_dataset

from edgepack.core.dataset import ArrayDataset, check_dataset
from edgepack.core.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_dataset(config: DataConfig, shapes: dict[str, list[int]], dtypes: dict[str, str],
                 split: str = "test") -> tuple[ArrayDataset, str]:  # fmt: skip
    """The samples and a description naming where they came from (for error messages and results.json)."""
    names = list(shapes)
    dataset, description = _load(config, names, shapes, split)
    check_dataset(dataset, shapes, dtypes, description)
    if config.max_samples is not None and config.max_samples < len(dataset):
        dataset = dataset.take(np.arange(config.max_samples))
    return dataset, description


def _load(config: DataConfig, names: list[str], shapes: dict, split: str) -> tuple[ArrayDataset, str]:
    if config.source == DataSourceKind.DIGITS:
        _single_input(names, "digits")
        return load_digits_dataset(names[0], split=split), f"digits ({split} split)"
    if config.source == DataSourceKind.NPZ:
        return load_npz_dataset(config.path, names), str(config.path)
    if config.source == DataSourceKind.IMAGES:
        _single_input(names, "an image folder")
        return load_image_folder(config.path, names[0], shapes[names[0]], config.preprocessing), str(config.path)
    return load_from_callable(config.function, names), f"callable {config.function}"


def _single_input(names: list[str], what: str) -> None:
    if len(names) != 1:
        raise DataError(f"{what} feeds one image input; the model has inputs {names}")


def load_image_folder(folder: Path, name: str, shape: list[int], preprocessing: Preprocessing | None) -> ArrayDataset:
    """Every image under ``folder``; when all sit in subfolders, those name the classes (sorted) and give labels."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not Path(folder).is_dir() or not files:
        raise DataError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    preprocessing = preprocessing or Preprocessing()
    images = np.stack([preprocess_image(f, shape, preprocessing) for f in files])
    return ArrayDataset({name: images}, _folder_labels(Path(folder), files))


def preprocess_image(path: Path, shape: list[int], p: Preprocessing) -> np.ndarray:
    """One image -> (C, H, W) float32, as the ONNX model takes it: resize, color order, (raw*scale - mean)/std."""
    from PIL import Image

    channels = shape[1]
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        height, width = p.resize or shape[2:4]
        pixels = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if p.color == "bgr":
        pixels = pixels[:, :, ::-1]
    normalised = (pixels * p.scale - np.float32(p.mean)) / np.float32(p.std)
    return normalised.transpose(2, 0, 1).astype(np.float32)


def _folder_labels(folder: Path, files: list[Path]) -> np.ndarray | None:
    classes = [f.relative_to(folder).parts[0] for f in files]
    if any(len(f.relative_to(folder).parts) < 2 for f in files):
        return None  # images at the top level: no classes
    names = sorted(set(classes))
    return np.array([names.index(c) for c in classes], dtype=np.int64)


def load_from_callable(spec: str, names: list[str]) -> ArrayDataset:
    """'package.module:function' -> {input_name: array (N, ...), 'labels': optional} (the same shape as an npz)."""
    module_name, _, attribute = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as e:
        raise DataError(f"data function {spec!r} cannot be imported: {e}") from e
    arrays = function()
    if not isinstance(arrays, dict) or any(n not in arrays for n in names):
        held = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
        raise DataError(f"data function {spec!r} must return {{input_name: array}} for inputs {names}; got {held}")
    labels = arrays.get("labels")
    return ArrayDataset({n: np.asarray(arrays[n]) for n in names}, None if labels is None else np.asarray(labels))
