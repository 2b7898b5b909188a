"""The converter test zoo in integer form: for each architecture and precision, one calibration written as ONNX QDQ and
as TFLite; each file's cosine to the float model in its own runtime, and how far the two integer files are apart in
steps of the output's grid.

    .venv/bin/python benchmarks/integer_zoo.py [--precisions int8 int16x8] [--samples 24]

The nets are the narrow copies of tests/converters/test_integer_lowering.py (random weights, BatchNorm statistics
from random inputs), calibrated on 96 random-normal samples (token ids for the encoder) and measured on others.
Random deep nets lose far more to int8 than trained ones (MobileNetV2 ~4 dB); what matters here is that TFLite loses
no more than ONNX and that the two agree. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.calibration.ptq import QuantScheme  # noqa: E402

from edgepack.core.dataset import ArrayDataset  # noqa: E402
from edgepack.core.errors import EdgepackError  # noqa: E402
from tests.converters.integer_check import cosine, quantize_both, run_onnx, run_tflite_each  # noqa: E402
from tests.converters.test_integer_lowering import SEQUENCE_ZOO, VISION_ZOO, image_batch  # noqa: E402
from tests.converters.torch_check import export  # noqa: E402


def cases():
    """name -> (module factory, data(count, seed), input names, output names, export options), both zoos."""
    for name, (factory, shape, outputs) in VISION_ZOO.items():
        yield name, (factory, lambda n, seed, s=shape: {"image": image_batch(n, s, seed)}, ["image"], outputs, {})
    yield from SEQUENCE_ZOO.items()


SCHEMES = {"default": {}, "minmax": {"method": "minmax", "bias_correction": False},
           "auto+bc": {"method": "auto", "bias_correction": True},
           "minmax+bc": {"method": "minmax", "bias_correction": True}}  # fmt: skip


def measure(name, case, precision: str, samples: int, folder: Path, scheme: str = "default") -> str:
    factory, data, inputs, outputs, options = case
    torch.manual_seed(0)
    examples = tuple(torch.from_numpy(v) for v in data(1, 0).values())
    float_onnx = export(factory().eval(), folder / f"{name}.onnx", examples, inputs, outputs, **options)
    try:
        chosen = QuantScheme(precision=precision, **SCHEMES[scheme])
        files = quantize_both(float_onnx, ArrayDataset(data(96, 1)), precision, chosen)
    except EdgepackError as e:
        return f"| {name} | {precision} | refused: {str(e)[:80]} | | | |"
    feeds = data(samples, 2)
    reference, onnx_q, tflite_q = run_onnx(float_onnx, feeds), run_onnx(files.onnx_path, feeds), None
    tflite_q = run_tflite_each(files.tflite_path, feeds)
    first = outputs[0]
    step = files.calibration.activations.get(first)
    steps = np.abs(onnx_q[first] - tflite_q[first]) / float(np.max(step.scale)) if step else None
    agreement = f"{np.mean(steps <= 1.001):.1%}, max {steps.max():.0f}" if steps is not None else "(float output)"
    precision = precision if scheme == "default" else f"{precision} {scheme}"
    return (f"| {name} | {precision} | {cosine(reference[first], onnx_q[first]):.4f} | "
            f"{cosine(reference[first], tflite_q[first]):.4f} | {cosine(onnx_q[first], tflite_q[first]):.4f} | "
            f"{agreement} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", default=["int8", "int16x8"])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--schemes", nargs="+", default=["default"], choices=list(SCHEMES),
                        help="default: the quantize stage's defaults; minmax: min-max ranges, no bias correction; "
                        "auto+bc / minmax+bc: with bias correction")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | precision | cos ONNX vs float | cos TFLite vs float | cos ONNX vs TFLite | within 1 step, max |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in cases():
            for precision in args.precisions:
                for scheme in args.schemes:
                    print(measure(name, case, precision, args.samples, Path(tmp), scheme), flush=True)


if __name__ == "__main__":
    main()
