"""What batching the robustness passes saves: each perturbation of the default ``robustness:`` block run through an
ONNX file one sample a call (as before) and many a call (edgepack/running/batched.py), with the top-1 of both.

    .venv/bin/python benchmarks/robustness_batching.py [--samples 1000] [--size 96] [--onnx FILE ...]

Without --onnx: MobileNetV2 (random weights with BatchNorm statistics, batch fixed at 1 as exported) at
1x3xSIZExSIZE on random-normal samples with random labels, as benchmarks/calibration_cost.py builds it. Each figure
is the minimum of --repeats rounds (a shared machine only ever adds time). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def dataset_for(path: Path, count: int):
    import onnx

    from edgepack.core.dataset import ArrayDataset

    model = onnx.load(path)
    first = model.graph.input[0]
    shape = [d.dim_value for d in first.type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng(0)
    return ArrayDataset({first.name: rng.standard_normal([count, *shape], dtype=np.float32)},
                        rng.integers(0, 10, count))  # fmt: skip


def timed(outputs_of, dataset) -> tuple[float, dict]:
    from edgepack.running.measure import top1
    from edgepack.running.robustness import RobustnessConfig, perturbed_datasets

    started = time.perf_counter()
    figures = {c["label"]: top1(outputs_of(d), dataset.labels) for c, d in
               perturbed_datasets(RobustnessConfig(), dataset, 0)}  # fmt: skip
    figures["clean"] = top1(outputs_of(dataset), dataset.labels)
    return time.perf_counter() - started, figures


def compare(path: Path, count: int, repeats: int) -> None:
    from edgepack.converters.runtime import open_session
    from edgepack.converters.verify import predict

    from edgepack.running.batched import onnx_outputs_batched

    dataset = dataset_for(path, count)
    session = open_session(path)
    ways = {"one a call": lambda d: predict(session, d, 1), "batched": onnx_outputs_batched(path)}
    results = {name: [timed(way, dataset) for _ in range(repeats)] for name, way in ways.items()}
    seconds = {name: min(s for s, _ in runs) for name, runs in results.items()}
    same = results["one a call"][0][1] == results["batched"][0][1]
    print(f"{path.name}: {count} samples x 7 passes: one sample a call {seconds['one a call']:.2f} s, batched "
          f"{seconds['batched']:.2f} s ({seconds['one a call'] / seconds['batched']:.1f}x); "
          f"top-1 figures identical: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--onnx", type=Path, nargs="*")
    args = parser.parse_args()
    if args.onnx:
        for path in args.onnx:
            compare(path, args.samples, args.repeats)
        return
    from benchmarks.calibration_cost import export_mobilenet_v2

    with tempfile.TemporaryDirectory() as folder:
        compare(export_mobilenet_v2(Path(folder) / "mobilenet_v2.onnx", args.size), args.samples, args.repeats)


if __name__ == "__main__":
    main()
