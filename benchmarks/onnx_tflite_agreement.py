"""How closely ONNX int8 (onnxruntime) and TFLite int8 (LiteRT, default XNNPACK delegate) of ONE calibration agree,
on mobile CNNs built in code, and where they part (calibration/agreement.py).

    .venv/bin/python benchmarks/onnx_tflite_agreement.py [--models mobilenet_v2 mobilenet_v3 efficientnet_lite
                                                          efficientnet_b0] [--size 224] [--samples 32]

Each model: random weights with BatchNorm statistics from random inputs (tests/converters/torch_check.py), legacy
export (BatchNorm folded), min-max calibration on 64 random-normal samples, both files written as the quantize stage
writes them; then, on other random-normal samples, the share of output values within one output step of each other,
the largest difference in steps, the first activation whose integers differ and the layers where disagreement
starts afresh (every quantized input identical, the layer's kernel rounds differently). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.calibration.agreement import divergence_summary, layer_agreement  # noqa: E402
from edgepack.calibration.ptq import QuantScheme, calibrate  # noqa: E402
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite  # noqa: E402
from edgepack.converters.qdq import dequantized_constants, write_qdq_model  # noqa: E402
from edgepack.converters.runtime import open_session  # noqa: E402
from edgepack.converters.verify import predict  # noqa: E402

from edgepack.core.dataset import ArrayDataset  # noqa: E402
from tests.converters.arch_vision import EfficientNetB0, MobileNetV2, MobileNetV3Small  # noqa: E402
from tests.converters.torch_check import calibrate_batchnorm, export  # noqa: E402

MODELS = {
    "mobilenet_v2": lambda: MobileNetV2(),
    "mobilenet_v3": lambda: MobileNetV3Small(),  # hard-swish, squeeze-excite with hard-sigmoid
    "efficientnet_lite": lambda: EfficientNetB0(lite=True),  # ReLU6, no squeeze-excite
    "efficientnet_b0": lambda: EfficientNetB0(),  # SiLU, squeeze-excite with sigmoid
}
CALIBRATION_SAMPLES = 64


def write_files(name: str, size: int, folder: Path):
    torch.manual_seed(0)
    module = calibrate_batchnorm(MODELS[name](), [8, 3, size, size])
    shape = [1, 3, size, size]
    export(module, folder / "fp32.onnx", (torch.zeros(shape),), ["image"], ["logits"])
    model = onnx.load(str(folder / "fp32.onnx"))
    rng = np.random.default_rng(0)
    samples = rng.standard_normal([CALIBRATION_SAMPLES, *shape[1:]], np.float32)
    calibration = calibrate(model, ArrayDataset({"image": samples}), QuantScheme(samples=CALIBRATION_SAMPLES))
    write_qdq_model(model, folder / "int8.onnx", calibration.plan, calibration.activations)
    ranges = {t: tuple(float(v) for v in p.representable_range()) for t, p in calibration.activations.items()}
    constants = dequantized_constants(model.graph, calibration.plan, calibration.activations)
    quantization = FakeQuantization(ranges, 8, constants=constants)
    convert_onnx_to_tflite(folder / "fp32.onnx", folder / "int8.tflite", {"image": shape}, quantization)
    return calibration


def measure(name: str, size: int, samples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calibration = write_files(name, size, folder)
        rng = np.random.default_rng(1)
        data = ArrayDataset({"image": rng.standard_normal([samples, 3, size, size], np.float32)})
        tflite = open_session(folder / "int8.tflite")
        onnx_out = predict(open_session(folder / "int8.onnx"), data, 1)["logits"]
        steps = np.abs(onnx_out - predict(tflite, data, 1)["logits"]) / float(calibration.activations["logits"].scale)
        layers = layer_agreement(folder / "int8.onnx", folder / "int8.tflite", calibration.activations,
                                 tflite.inputs, data.head(min(samples, 8)), 1)  # fmt: skip
        summary = divergence_summary(layers, onnx.load(str(folder / "int8.onnx")).graph, "logits")
    print(f"{name} ({size}x{size}, {samples} samples): {np.mean(steps <= 1.001):.1%} of outputs within one step, "
          f"max {steps.max():.0f} steps; {summary['layers_identical']}/{summary['layers_compared']} layers "
          "identical")  # fmt: skip
    first = summary["first_divergence"]
    if first:
        print(f"  first divergence: {first['op']} {first['tensor']} ({first['exact']:.6f} of values equal)")
    for entry in summary["divergence_starts"]:
        equal, most = entry["exact"], entry["max_steps"]
        print(f"  starts afresh at: {entry['op']} {entry['tensor']} ({equal:.6f} equal, max {most})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    for name in args.models:
        measure(name, args.size, args.samples)


if __name__ == "__main__":
    main()
