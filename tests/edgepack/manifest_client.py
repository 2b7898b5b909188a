"""An app's side of manifest.json: classify raw images with an artifact using only the manifest, numpy and the
runtime (ai_edge_litert for TFLite, onnxruntime for ONNX). Nothing of edgepack is imported; the test runs this file
as a separate, isolated process and checks that.

    python manifest_client.py MANIFEST.json ARTIFACT_NAME RAW_IMAGES.npy   ->  prints {"predictions": [...], ...}
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def verified_model_bytes(manifest_path: Path, entry: dict) -> bytes:
    data = (manifest_path.parent / entry["file"]).read_bytes()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SystemExit(f"{entry['file']} does not match the manifest's sha256/bytes")
    return data


def preprocess(raw: np.ndarray, preprocessing: dict) -> np.ndarray:
    """A raw (H, W) or (H, W, C) image -> (H, W, C) float32 model values: resize, then (raw*scale - mean) / std."""
    image = raw.astype(np.float32)
    image = image[:, :, None] if image.ndim == 2 else image
    if preprocessing["resize"] and list(image.shape[:2]) != preprocessing["resize"]:
        image = resize_nearest(image, *preprocessing["resize"])
    mean = np.asarray(preprocessing["mean"], np.float32)
    std = np.asarray(preprocessing["std"], np.float32)
    return (image * np.float32(preprocessing["scale"]) - mean) / std


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.arange(height) * image.shape[0] // height
    columns = np.arange(width) * image.shape[1] // width
    return image[rows][:, columns]


def arrange(image_hwc: np.ndarray, tensor: dict) -> np.ndarray:
    """One image as a batch in the tensor's layout (NHWC, NCHW, ...)."""
    batch = image_hwc[None]  # N, H, W, C
    array = np.transpose(batch, ["NHWC".index(axis) for axis in tensor["layout"]])
    if list(array.shape) != tensor["shape"]:
        raise SystemExit(f"input {tensor['name']}: built shape {list(array.shape)}, manifest says {tensor['shape']}")
    return array


def to_tensor_dtype(values: np.ndarray, tensor: dict) -> np.ndarray:
    """Float values -> the tensor's dtype; integer tensors are quantized: q = round(x / scale) + zero_point."""
    quantization, dtype = tensor["quantization"], np.dtype(tensor["dtype"])
    if quantization is None:
        return values.astype(dtype)
    scale, zero_point = quantization["scale"][0], quantization["zero_point"][0]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def to_float(values: np.ndarray, tensor: dict) -> np.ndarray:
    quantization = tensor["quantization"]
    if quantization is None:
        return values.astype(np.float32)
    return (values.astype(np.float32) - quantization["zero_point"][0]) * quantization["scale"][0]


def runner_for(entry: dict, model: bytes):
    """A function {runtime_key: array} -> {runtime_key: array} in the artifact's runtime."""
    if entry["format"] == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=model)
        signature = interpreter.get_signature_runner()
        return lambda feeds: signature(**feeds)
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds), strict=True))


def classify(manifest_path: Path, artifact: str, raw_images: np.ndarray) -> list[int]:
    manifest = json.loads(manifest_path.read_text())
    entry = next(a for a in manifest["artifacts"] if a["name"] == artifact)
    run = runner_for(entry, verified_model_bytes(manifest_path, entry))
    (tensor,), output = entry["inputs"], entry["outputs"][0]
    predictions = []
    for raw in raw_images:
        values = arrange(preprocess(raw, manifest["preprocessing"]), tensor)
        scores = run({tensor["runtime_key"]: to_tensor_dtype(values, tensor)})[output["runtime_key"]]
        predictions.append(int(np.argmax(to_float(scores, output))))
    return predictions


if __name__ == "__main__":
    manifest_file, name, images_file = sys.argv[1:4]
    found = classify(Path(manifest_file), name, np.load(images_file))
    imported = sorted({m.split(".")[0] for m in sys.modules} & {"edgepack", "converters", "calibration", "tests"})
    print(json.dumps({"predictions": found, "edgepack_modules_imported": imported}))
