"""Convert every architecture of the converter-coverage tests at full size (or at test size) and print, per model:
conversion seconds, TRANSPOSE count, the main TFLite ops, and the max abs error of LiteRT against onnxruntime and
against torch (with the tolerance: 1e-4 of the output's range).

    .venv/bin/python benchmarks/convert_architectures.py [--size full|test] [--only mobilenet_v2 ...] [--json out.json]

Weights are random (BatchNorm statistics set from random inputs, as brief training would); the figures are about
conversion, not accuracy. Asserts nothing: a shared machine's timings vary too much for thresholds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.converters import arch_sequence as seq  # noqa: E402
from tests.converters import arch_vision as vision  # noqa: E402
from tests.converters.test_architectures_sequence import BERT_INPUTS, bert_examples  # noqa: E402
from tests.converters.torch_check import calibrate_batchnorm, check_architecture  # noqa: E402

SHOWN_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL", "GELU")


def image(size: int, batch: int = 1) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)),)


def cnn(module, size: int):
    return calibrate_batchnorm(module, [4, 3, size, size])


@dataclass
class Spec:
    module: Callable[[], torch.nn.Module]
    examples: Callable[[], tuple]
    inputs: list[str] = field(default_factory=lambda: ["image"])
    outputs: list[str] = field(default_factory=lambda: ["logits"])


def vision_specs(full: bool) -> dict[str, Spec]:
    size = 224 if full else 64
    width = lambda narrow: 1.0 if full else narrow  # noqa: E731
    return {
        "mobilenet_v2": Spec(lambda: cnn(vision.MobileNetV2(width(0.35)), size), lambda: image(size)),
        "mobilenet_v3_small": Spec(lambda: cnn(vision.MobileNetV3Small(width(0.5)), size), lambda: image(size)),
        "efficientnet_b0": Spec(lambda: cnn(vision.EfficientNetB0(width(0.5), width(0.5)), size), lambda: image(size)),
        "resnet18": Spec(lambda: cnn(vision.ResNet18(width(0.25)), size), lambda: image(size)),
        "unet": Spec(
            lambda: cnn(vision.UNet(32 if full else 8), 256 if full else 64), lambda: image(256 if full else 64)
        ),
        "detector": Spec(
            lambda: cnn(vision.Detector(width=32 if full else 16), 320 if full else 64),
            lambda: image(320 if full else 64),
            outputs=["boxes", "scores"],
        ),
        "audio_1d": Spec(
            lambda: calibrate_batchnorm(vision.AudioNet(), [4, 1, 16000 if full else 4000]),
            lambda: (torch.randn(1, 1, 16000 if full else 4000),),
            inputs=["waveform"],
        ),
    }


def sequence_specs(full: bool) -> dict[str, Spec]:
    steps, hidden = (50, 128) if full else (10, 32)
    bert = {"dim": 384, "heads": 12, "layers": 6, "max_len": 128} if full else {"layers": 2}  # MiniLM-L6 shape
    vit = {"image": 224, "patch": 16, "dim": 192, "heads": 3, "layers": 12} if full else {}  # ViT-Tiny shape
    features = lambda: (torch.randn(1, steps, 20),)  # noqa: E731
    stream = ["chunk", "conv_state", "gru_state"], ["logits", "conv_state_out", "gru_state_out"]
    return {
        "bert": Spec(
            lambda: seq.MiniBert(**bert),
            lambda: bert_examples(128 if full else 16, 8),
            BERT_INPUTS,
            ["last_hidden_state", "pooler_output"],
        ),
        "vit": Spec(lambda: seq.TinyViT(**vit), lambda: image(224 if full else 32)),
        "lstm": Spec(lambda: seq.RecurrentClassifier("lstm", hidden=hidden), features, ["x"]),
        "gru": Spec(lambda: seq.RecurrentClassifier("gru", hidden=hidden), features, ["x"]),
        "lstm_cell_unrolled": Spec(lambda: seq.UnrolledRecurrent("lstm", hidden=hidden), features, ["x"]),
        "streaming_state": Spec(
            seq.StreamingKeywordNet,
            lambda: (torch.randn(1, 16, 8), torch.zeros(1, 16, 4), torch.zeros(1, 1, 32)),
            *stream,
        ),
    }


def measure(name: str, spec: Spec, folder: Path, dynamo: bool) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    result = check_architecture(spec.module().eval(), spec.examples(), folder, spec.inputs, spec.outputs, dynamo=dynamo)
    ops = result.ops
    return {
        "model": name,
        "exporter": "dynamo" if dynamo else "legacy",
        "convert_s": round(result.conversion.seconds, 2),
        "total_s": round(time.perf_counter() - start, 1),
        "transposes": ops.get("TRANSPOSE", 0),
        "tflite_ops": sum(ops.values()),
        "main_ops": {op: ops[op] for op in SHOWN_OPS if ops.get(op)},
        "error_vs_ort": result.vs_ort[0],
        "error_vs_torch": result.vs_torch[0],
        "tolerance": result.vs_ort[1],
    }


def print_row(row: dict) -> None:
    ops = ", ".join(f"{k}={v}" for k, v in row["main_ops"].items())
    print(
        f"{row['model']:<20} {row['exporter']:<7} {row['convert_s']:>7.2f}s {row['transposes']:>4} "
        f"{row['tflite_ops']:>6}  ort {row['error_vs_ort']:.1e}  torch {row['error_vs_torch']:.1e}  "
        f"tol {row['tolerance']:.1e}  {ops}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "test"], default="full")
    parser.add_argument("--only", nargs="*", help="architecture names (default: all)")
    parser.add_argument("--dynamo", action="store_true", help="export with the dynamo exporter (default legacy)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    full = args.size == "full"
    models = {**vision_specs(full), **sequence_specs(full)}
    print(f"{'model':<20} {'export':<7} {'convert':>8} {'T':>4} {'ops':>6}  max abs error (LiteRT vs ...)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or models:
            folder = Path(tmp) / name
            folder.mkdir()
            rows.append(measure(name, models[name], folder, args.dynamo))
            print_row(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
