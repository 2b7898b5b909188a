"""Benchmark .tflite and .onnx artifacts on a target (the host today; ssh and adb targets later).

Importing this package stays light: the runtimes (LiteRT, onnxruntime, tensorflow) are imported only by
``runner.py``, inside the separate process that measures.
"""

from device_bench.targets import (
    RUNNER_PATH,
    BenchOptions,
    BenchTarget,
    HostTarget,
    bench,
    parse_target,
)

__all__ = ["RUNNER_PATH", "BenchOptions", "BenchTarget", "HostTarget", "bench", "parse_target"]
