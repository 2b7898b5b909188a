"""AdaRound's cost and effect: seconds per model, per-layer output error against nearest rounding, accuracy.

    .venv/bin/python benchmarks/adaround_cost.py [--iterations 1000] [--mobilenet-size 96] [--skip-mobilenet]
                                                 [--skip-digits]

1. The digits CNNs of the tests (trained here on the bundled digits, 8x8), each packed twice through the real
   pipeline (quantize with weight_rounding nearest / adaround, per-channel and per-tensor weights): top-1 of the
   ONNX and TFLite int8 files on the 360 test digits, the quantize stage's seconds, AdaRound's own seconds.
2. MobileNetV2 (width 1.0, random weights with BatchNorm statistics from random inputs) at 1x3xSxS: AdaRound alone
   on its 53 weighted layers over 64 random-normal calibration samples: seconds, and the median and best ratio
   nearest MSE / AdaRound MSE of the layer outputs (above 1: AdaRound's layer is closer to float).
Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402
from edgepack.calibration.adaround import adaround_model  # noqa: E402
from edgepack.calibration.plan import plan_quantization  # noqa: E402

import edgepack  # noqa: E402
from edgepack.core.dataset import ArrayDataset  # noqa: E402
from edgepack.recipe import parse_recipe  # noqa: E402
from tests.converters.arch_vision import MobileNetV2  # noqa: E402
from tests.converters.torch_check import calibrate_batchnorm, export  # noqa: E402
from tests.edgepack.helpers import artifact, image_recipe  # noqa: E402
from tests.models import train_and_save  # noqa: E402

DIGITS_MODELS = ["digits_example", "conv_net", "depthwise_net"]
MOBILENET_SAMPLES = 64


def digits_table(folder: Path) -> None:
    print("digits CNNs (360 test digits): top-1 onnx-int8 / tflite-int8 (float), quantize s, AdaRound s")
    for name in DIGITS_MODELS:
        weights = train_and_save(name, folder / f"{name}.pt")
        for per_channel in (True, False):
            for rounding in ("nearest", "adaround"):
                quantize = {"stage": "quantize", "weight_rounding": rounding, "per_channel_weights": per_channel}
                recipe = image_recipe(name, weights, stages=[{"stage": "export"}, quantize])
                run = edgepack.pack(parse_recipe(recipe), out=folder / f"{name}-{per_channel}-{rounding}", quiet=True)
                top1 = [artifact(run.results, a)["accuracy"]["top1"] for a in ("onnx-int8", "tflite-int8", "onnx-fp32")]
                details = artifact(run.results, "onnx-int8")["details"]
                ada = details.get("adaround", {}).get("seconds", 0.0)
                weights_kind = "per-channel" if per_channel else "per-tensor"
                print(f"  {name:>15} {weights_kind:>11} {rounding:>8}: {top1[0]:.4f} / {top1[1]:.4f} ({top1[2]:.4f}), "
                      f"{details['calibration_seconds']:.1f} s, {ada:.1f} s")  # fmt: skip


def mobilenet_cost(folder: Path, size: int, iterations: int) -> None:
    torch.manual_seed(0)
    shape = [1, 3, size, size]
    module = calibrate_batchnorm(MobileNetV2(), [4, *shape[1:]])
    path = export(module, folder / "mobilenet_v2.onnx", (torch.zeros(shape),), ["image"], ["logits"])
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    data = ArrayDataset({"image": rng.standard_normal((MOBILENET_SAMPLES, *shape[1:])).astype(np.float32)})
    plan = plan_quantization(model)
    started = time.perf_counter()
    rounding = adaround_model(model, plan, data, iterations=iterations)
    seconds = time.perf_counter() - started
    ratios = np.array([r["mse_nearest"] / max(r["mse_adaround"], 1e-30) for r in rounding.layers])
    layers = len(rounding.layers)
    print(f"MobileNetV2 {size}x{size}, {layers} layers, {iterations} iterations each: {seconds:.0f} s "
          f"({seconds / layers:.1f} s a layer); nearest/AdaRound layer MSE: median {np.median(ratios):.2f}, "
          f"best {ratios.max():.2f}, layers improved {int((ratios > 1).sum())}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--mobilenet-size", type=int, default=96)
    parser.add_argument("--skip-mobilenet", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adaround_cost_") as folder:
        if not args.skip_digits:
            digits_table(Path(folder))
        if not args.skip_mobilenet:
            mobilenet_cost(Path(folder), args.mobilenet_size, args.iterations)


if __name__ == "__main__":
    main()
