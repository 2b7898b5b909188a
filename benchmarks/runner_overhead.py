"""What the benchmark runner adds to a latency: its p50 against a bare timing loop in this process.

    .venv/bin/python benchmarks/runner_overhead.py [--runs 2000]

Both sides run the same small ONNX model with the same session options (1 intra-op thread, sequential) and
the same seeded input; the runner's figure comes from a HostTarget subprocess, the bare one from perf_counter
around session.run here. The difference is the cost of the runner's own loop (a closure and a list append per
run). Prints the figures; asserts nothing, since a shared machine's noise is larger than the overhead itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from edgepack.device_bench import BenchOptions, bench
from onnx import TensorProto, helper, numpy_helper

INPUT_SHAPE = [1, 3, 32, 32]


def write_small_cnn(path: Path) -> Path:
    """Two 3x3 convolutions (3 -> 16 -> 16 channels) with relus on a 32x32 image: tens of microseconds."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in [(16, 3, 3, 3), (16, 16, 3, 3)]]
    nodes = [
        helper.make_node("Conv", ["image", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["features"]),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, INPUT_SHAPE)
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 16, 32, 32])
    initializers = [numpy_helper.from_array(weight, f"w{index}") for index, weight in enumerate(weights)]
    graph = helper.make_graph(nodes, "small_cnn", [image], [features], initializer=initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def bare_loop_p50_ms(model_path: Path, runs: int, warmup: int) -> float:
    """The plainest measurement of the same thing: session.run between two perf_counter calls."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feed = {"image": np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(latencies, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="timed runs on each side")
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as folder:
        model_path = write_small_cnn(Path(folder) / "small_cnn.onnx")
        record = bench(model_path, options=BenchOptions(runs=runs, warmup=50, min_seconds=0, threads=1))
        bare_p50 = bare_loop_p50_ms(model_path, runs, warmup=50)
    runner_p50 = record["latency_ms"]["p50"]
    overhead_us = (runner_p50 - bare_p50) * 1000.0
    print(f"model: small CNN (ONNX, {record['model_bytes']} bytes), onnxruntime {record['runtime_version']}")
    print(f"runner p50 {runner_p50 * 1000:.2f} us over {record['runs']} runs (subprocess via HostTarget)")
    print(f"bare   p50 {bare_p50 * 1000:.2f} us over {runs} runs (perf_counter around session.run here)")
    print(f"overhead   {overhead_us:+.2f} us per run ({overhead_us / (bare_p50 * 1000) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
