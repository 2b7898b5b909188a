"""Benchmark .tflite and .onnx artifacts on a target: this host, a device over ssh, an Android device over adb.

Importing this package stays light: the runtimes (LiteRT, onnxruntime, tensorflow) are imported only by
``runner.py``, inside the separate process that measures, and paramiko only when an ssh target is used.
"""

from edgepack.device_bench.energy_proxy import energy_proxy
from edgepack.device_bench.options import BenchOptions
from edgepack.device_bench.records import RUNNER_FILES, RUNNER_PATH
from edgepack.device_bench.targets import (
    TARGET_FORMS,
    BenchTarget,
    HostTarget,
    TargetRun,
    bench,
    bench_each_thread_count,
    parse_target,
    run_on_target,
)

__all__ = [
    "RUNNER_FILES",
    "RUNNER_PATH",
    "TARGET_FORMS",
    "BenchOptions",
    "BenchTarget",
    "HostTarget",
    "TargetRun",
    "bench",
    "bench_each_thread_count",
    "energy_proxy",
    "parse_target",
    "run_on_target",
]
