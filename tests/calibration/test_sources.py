"""Every data source kind through the one loader: image folders with declared preprocessing, callables, npz."""

from __future__ import annotations

import numpy as np
import pytest
from edgepack.calibration.data_config import DataConfig
from edgepack.calibration.source_loaders import load_dataset
from edgepack.calibration.sources import digits_split
from PIL import Image

import edgepack
from edgepack.core.errors import DataError
from edgepack.recipe import parse_recipe
from tests.edgepack.helpers import artifact, image_recipe

SHAPES, DTYPES = {"image": [1, 1, 8, 8]}, {"image": "float32"}


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """120 digits written as 8-bit grayscale PNGs, one subfolder per class."""
    folder = tmp_path_factory.mktemp("digit_pngs")
    images, labels = digits_split("train")
    for index in range(120):
        (folder / f"class_{labels[index]}").mkdir(exist_ok=True)
        pixels = np.round(images[index, 0] * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"class_{labels[index]}" / f"{index:04d}.png")
    return folder


def test_image_folder_applies_the_declared_preprocessing_and_labels_by_subfolder(digit_folder):
    config = DataConfig(source="images", path=digit_folder, preprocessing={"scale": 1 / 255, "color": "grayscale"})
    dataset, description = load_dataset(config, SHAPES, DTYPES)
    assert len(dataset) == 120 and dataset.inputs["image"].shape == (120, 1, 8, 8) and description == str(digit_folder)
    images, labels = digits_split("train")
    order = np.argsort([f"class_{labels[i]}/{i:04d}" for i in range(120)])  # files load in sorted path order
    assert np.abs(dataset.inputs["image"] - images[order]).max() <= 0.5 / 255 + 1e-6  # PNG rounding only
    assert np.array_equal(dataset.labels, labels[order])  # class_0 .. class_9 sorted: index = digit


def test_bgr_order_and_mean_std(tmp_path):
    Image.fromarray(np.full((2, 2, 3), [200, 100, 0], np.uint8), mode="RGB").save(tmp_path / "red.png")
    preprocessing = {"scale": 1 / 100, "color": "bgr", "mean": [1, 1, 1], "std": [2, 2, 2]}
    config = DataConfig(source="images", path=tmp_path, preprocessing=preprocessing)
    dataset, _ = load_dataset(config, {"x": [1, 3, 2, 2]}, {"x": "float32"})
    assert dataset.labels is None  # top-level images: no classes
    assert dataset.inputs["x"][0, :, 0, 0].tolist() == pytest.approx([(0 - 1) / 2, (1 - 1) / 2, (2 - 1) / 2])


def test_callable_source_and_its_errors():
    dataset, _ = load_dataset(DataConfig(source="callable", function="tests.calibration.data_functions:digits_train"),
                              SHAPES, DTYPES)  # fmt: skip
    assert len(dataset) == 100 and dataset.labels.shape == (100,)
    with pytest.raises(DataError, match="must return .* for inputs \\['image'\\]; got \\['pixels'\\]"):
        load_dataset(DataConfig(source="callable", function="tests.calibration.data_functions:wrong_key"), SHAPES,
                     DTYPES)  # fmt: skip
    with pytest.raises(DataError, match="cannot be imported"):
        load_dataset(DataConfig(source="callable", function="tests.nowhere:f"), SHAPES, DTYPES)


def test_empty_folder_and_missing_fields(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(DataConfig(source="images", path=tmp_path), SHAPES, DTYPES)
    with pytest.raises(ValueError, match="'callable' needs 'function"):
        DataConfig(source="callable")


def test_quantize_calibrates_from_an_image_folder(tmp_path, digit_folder, trained_weights):
    calibration = {"source": "images", "path": str(digit_folder), "preprocessing": {"scale": 1 / 255}}
    stages = [{"stage": "export", "exporter": "legacy"},
              {"stage": "quantize", "formats": ["tflite"], "calibration_data": calibration}]  # fmt: skip
    recipe = image_recipe("digits_example", trained_weights("digits_example"), stages=stages) | {"bench": None}
    results = edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True).results
    float_top1 = artifact(results, "torch-fp32")["accuracy"]["top1"]
    assert abs(artifact(results, "tflite-int8")["accuracy"]["top1"] - float_top1) <= 0.01
