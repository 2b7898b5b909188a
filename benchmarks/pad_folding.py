"""int8 against float in onnxruntime on an EfficientNet-Lite-class net with explicit 'same' Pads, before and after
folding the Pads into the Convs (calibration/fold_pads.py).

    .venv/bin/python benchmarks/pad_folding.py [--size 224] [--runs 100]

The net is tests/converters/arch_vision.py's EfficientNetB0(lite=True) (random weights, BatchNorm statistics from
random inputs) with every padded Conv rewritten as ZeroPad2d + Conv (TF's 'same' amounts), as TF-trained ports
export it: 17 Pad nodes. Each int8 file is written by edgepack from one minmax calibration on 16 random samples
(u8 activations, per-channel s8 weights, as the quantize stage writes them). Printed per file: the nodes left in
onnxruntime's optimized graph (ORT_ENABLE_ALL) that are not integer kernels, and p50 latency at 1 and 2 threads;
per threads, int8 p50 / float p50. Nothing is asserted: a shared machine's timings vary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.calibration.fold_pads import fold_pads  # noqa: E402
from edgepack.calibration.ptq import QuantScheme, calibrate  # noqa: E402
from edgepack.converters.qdq import write_qdq_model  # noqa: E402

from edgepack.core.dataset import ArrayDataset  # noqa: E402
from tests.converters.arch_vision import EfficientNetB0, with_explicit_same_padding  # noqa: E402
from tests.converters.torch_check import calibrate_batchnorm, export  # noqa: E402

CALIBRATION_SAMPLES = 16
FLOAT_OPS = {"Conv", "FusedConv", "NchwcConv", "Pad", "DequantizeLinear", "QuantizeLinear", "MaxPool", "AveragePool"}


def build(folder: Path, size: int) -> Path:
    torch.manual_seed(0)
    module = calibrate_batchnorm(EfficientNetB0(lite=True), [4, 3, size, size])
    example = torch.randn(1, 3, size, size)
    return export(with_explicit_same_padding(module).eval(), folder / "effnet_lite_pads.onnx", (example,), ["image"],
                  ["logits"])  # fmt: skip


def quantize(model: onnx.ModelProto, out: Path, data: ArrayDataset) -> Path:
    calibration = calibrate(model, data, QuantScheme())
    write_qdq_model(model, out, calibration.plan, calibration.activations)
    return out


def optimized_ops(path: Path, folder: Path) -> Counter:
    """Op types of onnxruntime's graph after all its fusions (QDQ -> QLinearConv and the rest)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def p50_ms(path: Path, feed: dict, threads: int, runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgepack-pad-folding-") as name:
        folder = Path(name)
        float_path = build(folder, args.size)
        model = onnx.load(str(float_path))
        rng = np.random.default_rng(0)
        data = ArrayDataset({"image": rng.standard_normal((CALIBRATION_SAMPLES, 3, args.size, args.size), np.float32)})
        folding = fold_pads(model)
        files = {"before (Pads kept)": quantize(model, folder / "int8_pads.onnx", data),
                 "after (Pads folded)": quantize(folding.model, folder / "int8_folded.onnx", data)}  # fmt: skip
        print(f"EfficientNet-Lite-class, {args.size}x{args.size}: {sum(n.op_type == 'Pad' for n in model.graph.node)} "
              f"Pad nodes, {len(folding.folded)} folded")  # fmt: skip
        feed = {"image": data.inputs["image"][:1]}
        floats = {threads: p50_ms(float_path, feed, threads, args.runs) for threads in (1, 2)}
        print(f"float: p50 {floats[1]:.2f} ms (1 thread), {floats[2]:.2f} ms (2 threads)")
        for label, path in files.items():
            ops = optimized_ops(path, folder)
            left = {op: count for op, count in sorted(ops.items()) if op in FLOAT_OPS}
            ratios = [p50_ms(path, feed, threads, args.runs) / floats[threads] for threads in (1, 2)]
            print(
                f"int8 {label}: int8/float p50 {ratios[0]:.2f}x (1 thread), {ratios[1]:.2f}x (2 threads); "
                f"QLinearConv {ops['QLinearConv']}, float/QDQ ops left after onnxruntime's fusion: {left}"
            )


if __name__ == "__main__":
    main()
