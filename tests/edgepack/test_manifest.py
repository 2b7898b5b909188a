"""manifest.json: valid against the shipped JSON Schema, refused when broken, and enough on its own for an app to
run an artifact and get the right top-1 on digits (manifest_client.py, a separate process with no edgepack)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgepack.calibration.sources import digits_split

from edgepack.core.errors import StageError
from edgepack.reports.manifest import build_manifest, manifest_schema, validate_manifest
from tests.edgepack import manifest_client
from tests.edgepack.helpers import artifact

CLIENT = Path(manifest_client.__file__)


def test_a_real_runs_manifest_carries_what_an_app_needs(digits_run):
    manifest = json.loads((digits_run.run_dir / "manifest.json").read_text())
    validate_manifest(manifest)
    shipped = {a["name"]: a for a in manifest["artifacts"]}
    tflite = shipped["tflite-fp32"]
    assert tflite["runtime"]["name"] == "litert" and tflite["runtime"]["min_version"]  # from the converter
    assert tflite["runtime"]["verified_with"].startswith("ai_edge_litert ")
    image = tflite["inputs"][0]
    assert (image["runtime_key"], image["shape"], image["dtype"], image["layout"]) == ("image", [1, 8, 8, 1], "float32",
                                                                                       "NHWC")  # fmt: skip
    assert shipped["onnx-fp32"]["inputs"][0]["layout"] == "NCHW" and tflite["outputs"][0]["quantization"] is None
    assert manifest["labels"] == [str(d) for d in range(10)]
    preprocessing = manifest["preprocessing"]
    assert (preprocessing["scale"], preprocessing["mean"], preprocessing["std"]) == (0.0625, [0.0], [1.0])
    assert preprocessing["resize"] == [8, 8] and preprocessing["color"] == "grayscale"
    assert manifest_schema()["$schema"].endswith("2020-12/schema")


def test_integer_tensors_carry_scale_and_zero_point(full_results):
    manifest = build_manifest(full_results)
    validate_manifest(manifest)
    int8 = next(a for a in manifest["artifacts"] if a["name"] == "tflite-int8")
    assert int8["inputs"][0]["quantization"] == {"scale": [1 / 255], "zero_point": [-128], "axis": None}
    assert int8["runtime"] == {"name": "litert", "min_version": "1.14.0",
                               "min_version_of": "TFLite runtime (the converter's)",
                               "verified_with": "ai_edge_litert 2.3.0"}  # fmt: skip


@pytest.mark.parametrize(
    "path, value, where",
    [
        (["artifacts", 0, "sha256"], "not-a-hash", "artifacts/0/sha256"),
        (["artifacts", 1, "inputs", 0, "dtype"], "complex64", "artifacts/1/inputs/0/dtype"),
        (["artifacts", 3, "inputs", 0, "quantization"], {"scale": [], "zero_point": [0], "axis": None},
         "artifacts/3/inputs/0/quantization"),
        (["preprocessing", "std"], [0.0], "preprocessing/std/0"),
    ],
)  # fmt: skip
def test_a_broken_manifest_is_refused_naming_the_key(full_results, path, value, where):
    manifest = copy.deepcopy(build_manifest(full_results))
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(StageError, match=f"at {where}"):
        validate_manifest(manifest)


def raw_digits(folder: Path) -> tuple[Path, np.ndarray]:
    """The held-out digits as the sensor gives them (integers 0..16, 8x8), and their labels."""
    images, labels = digits_split("test")
    path = folder / "raw_digits.npy"
    np.save(path, np.rint(images[:, 0] * 16).astype(np.uint8))
    return path, labels


@pytest.mark.parametrize("name", ["tflite-fp32", "onnx-fp32"])
def test_an_app_with_only_the_manifest_gets_the_measured_top1(digits_run, tmp_path, name):
    images, labels = raw_digits(tmp_path)
    manifest = digits_run.run_dir / "manifest.json"
    # -I: isolated mode, no PYTHONPATH and no current folder on sys.path, like an app's own process.
    done = subprocess.run([sys.executable, "-I", str(CLIENT), str(manifest), name, str(images)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["edgepack_modules_imported"] == []
    top1 = float(np.mean(np.array(answer["predictions"]) == labels))
    assert top1 == artifact(digits_run.results, name)["accuracy"]["top1"] and top1 > 0.9


def test_the_client_quantizes_integer_inputs_as_the_manifest_says(full_results):
    tensor = next(a for a in build_manifest(full_results)["artifacts"] if a["name"] == "tflite-int8")["inputs"][0]
    values = np.array([0.0, 0.25, 1.0, 2.0], np.float32)
    quantized = manifest_client.to_tensor_dtype(values, tensor)
    assert quantized.dtype == np.int8 and quantized.tolist() == [-128, -64, 127, 127]  # 2.0 saturates
    assert np.allclose(manifest_client.to_float(quantized[:3], tensor), values[:3], atol=1 / 255)
