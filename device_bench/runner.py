"""Benchmark one .tflite or .onnx model on this machine and print one JSON record on stdout.

This file is copied as-is to the device (a Raspberry Pi, an Android phone), so it imports only the standard
library, numpy and whichever interpreter is installed there; it never imports edgepack.

    python runner.py MODEL --runs 50 --warmup 5 --min-seconds 1 --threads 1 [--seed 0]

The measurement follows TFLite's benchmark_model and onnxruntime_perf_test: load time, first inference,
warm-up runs, then timed runs until both ``--runs`` runs and ``--min-seconds`` have passed. Inputs are set
once before timing so each timed run measures only the runtime's own work. On failure the record holds an
"error" key and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TFLITE_INSTALL_HINT = "pip install ai-edge-litert (or tflite-runtime, or tensorflow)"
ONNX_INSTALL_HINT = "pip install onnxruntime"
# onnxruntime names element types as strings; these are the ones a benchmark input can have.
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class RunnerError(Exception):
    """An expected failure (missing file, no interpreter, unreadable model) with a message for the user."""


@dataclass
class LoadedModel:
    """A model ready to run: inputs already set, so ``invoke`` times the runtime alone."""

    invoke: Callable[[], object]
    runtime: str
    runtime_version: str
    delegate: str
    inputs: list[dict]


class RecordingArgumentParser(argparse.ArgumentParser):
    """Bad arguments become a RunnerError, so even they end as one JSON record rather than usage text."""

    def error(self, message: str):
        raise RunnerError(f"bad arguments: {message}")


def count_at_least(least: int) -> Callable[[str], int]:
    # argparse names the function in its message ("invalid count value: 'x'"), hence the name.
    def count(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below the least allowed value {least}")
        return value

    return count


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = RecordingArgumentParser(description="Benchmark a .tflite or .onnx model; print one JSON record.")
    parser.add_argument("model", help="path to a .tflite or .onnx file")
    parser.add_argument("--runs", type=count_at_least(1), default=50, help="least number of timed runs")
    parser.add_argument("--warmup", type=count_at_least(0), default=5, help="untimed runs after the first")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="least wall time of the timed runs")
    parser.add_argument("--threads", type=count_at_least(1), default=1, help="CPU threads for the runtime")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input data")
    return parser.parse_args(argv)


def random_input(shape: list[int], dtype: type, rng: np.random.Generator) -> np.ndarray:
    """Seeded data for one input; a dynamic dimension (-1, None or a name) becomes 1."""
    concrete = [int(dim) if isinstance(dim, int | np.integer) and dim > 0 else 1 for dim in shape]
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(concrete).astype(dtype)
    if dtype.itemsize == 1 and dtype.kind in "iu":
        # 8-bit inputs are quantized activations: spread them over the whole range like real data.
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=concrete, endpoint=True, dtype=dtype)
    # Wider integers are usually indices or lengths, where zero is always valid.
    return np.zeros(concrete, dtype=dtype)


@dataclass
class Runtime:
    """An imported interpreter package and how to name it in the record."""

    module: object
    name: str
    version: str


def import_tflite_runtime() -> Runtime:
    """The first TFLite interpreter installed, lightest first; tensorflow only as a last resort."""
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    candidates = [
        ("ai_edge_litert.interpreter", "ai_edge_litert", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite_runtime", "tflite-runtime"),
        ("tensorflow.lite", "tensorflow", "tensorflow"),
    ]
    for module_name, name, distribution in candidates:
        try:
            module = import_module(module_name)
        except ImportError:
            continue
        try:
            runtime_version = version(distribution)
        except PackageNotFoundError:  # e.g. tensorflow-cpu or a source build: ask the package itself
            runtime_version = getattr(import_module(name), "__version__", "unknown")
        return Runtime(module, name, runtime_version)
    raise RunnerError(f"no TFLite interpreter is installed; {TFLITE_INSTALL_HINT}")


def import_onnx_runtime() -> Runtime:
    try:
        import onnxruntime
    except ImportError as error:
        raise RunnerError(f"onnxruntime is not installed; {ONNX_INSTALL_HINT}") from error
    return Runtime(onnxruntime, "onnxruntime", onnxruntime.__version__)


def tflite_delegate(interpreter: object) -> str:
    """'xnnpack' when LiteRT's default CPU delegate took part of the graph, else 'none'."""
    # Without explicit delegates the only one applied is the built-in XNNPACK, which shows as a DELEGATE node.
    ops_details = getattr(interpreter, "_get_ops_details", None)
    if ops_details is None:
        return "unknown"
    return "xnnpack" if any(op["op_name"] == "DELEGATE" for op in ops_details()) else "none"


def set_tflite_inputs(interpreter: object, rng: np.random.Generator) -> list[dict]:
    """Fix dynamic dimensions to 1, allocate, and fill every input once."""
    for detail in interpreter.get_input_details():
        signature = [int(dim) for dim in detail.get("shape_signature", detail["shape"])]
        if -1 in signature:
            interpreter.resize_tensor_input(detail["index"], [max(dim, 1) for dim in signature])
    interpreter.allocate_tensors()
    inputs = []
    for detail in interpreter.get_input_details():
        data = random_input(list(detail["shape"]), detail["dtype"], rng)
        interpreter.set_tensor(detail["index"], data)
        inputs.append(describe_input(detail["name"], data))
    return inputs


def describe_input(name: str, data: np.ndarray) -> dict:
    return {"name": name, "shape": list(data.shape), "dtype": data.dtype.name}


def load_tflite(runtime: Runtime, path: str, threads: int, rng: np.random.Generator) -> LoadedModel:
    try:
        interpreter = runtime.module.Interpreter(model_path=path, num_threads=threads)
        inputs = set_tflite_inputs(interpreter, rng)
    except (ValueError, RuntimeError) as error:
        raise RunnerError(f"{runtime.name} {runtime.version} could not load {path}: {error}") from error
    delegate = tflite_delegate(interpreter)
    return LoadedModel(interpreter.invoke, runtime.name, runtime.version, delegate, inputs)


def load_onnx(runtime: Runtime, path: str, threads: int, rng: np.random.Generator) -> LoadedModel:
    ort = runtime.module
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One inter-op thread and sequential execution, as onnxruntime_perf_test does by default.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception classes, unrelated to ValueError
        raise RunnerError(f"onnxruntime {runtime.version} could not load {path}: {error}") from error
    feed = {arg.name: random_input(arg.shape, ORT_DTYPES[arg.type], rng) for arg in session.get_inputs()}
    inputs = [describe_input(name, data) for name, data in feed.items()]
    return LoadedModel(lambda: session.run(None, feed), runtime.name, runtime.version, "cpu", inputs)


# suffix -> (import the runtime, load a model with it); importing is kept apart so load time excludes it.
RUNTIMES = {".tflite": (import_tflite_runtime, load_tflite), ".onnx": (import_onnx_runtime, load_onnx)}


def runtime_for(path: str) -> tuple[Callable[[], Runtime], Callable[..., LoadedModel]]:
    if not os.path.isfile(path):
        raise RunnerError(f"model file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in RUNTIMES:
        raise RunnerError(f"unsupported model file {path}: expected a .tflite or .onnx file, got {suffix!r}")
    return RUNTIMES[suffix]


def milliseconds_of(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000.0


def timed_runs(invoke: Callable[[], object], runs: int, min_seconds: float) -> tuple[array, float]:
    """Per-run latencies (ms) until both ``runs`` runs and ``min_seconds`` have passed; the wall time (s)."""
    # A flat array of doubles, 8 bytes a run, so that the harness adds little to the memory figures even
    # when a microsecond model runs a million times.
    latencies = array("d")
    start = time.perf_counter()
    while len(latencies) < runs or time.perf_counter() - start < min_seconds:
        latencies.append(milliseconds_of(invoke))
    return latencies, time.perf_counter() - start


def latency_summary(latencies: array) -> dict:
    values = np.asarray(latencies, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    summary = {"mean": values.mean(), "std": values.std(), "min": values.min()}
    summary.update({"p50": p50, "p90": p90, "p99": p99, "max": values.max()})
    # Six decimals keep nanoseconds: a tiny model runs in a microsecond or two.
    return {key: round(float(value), 6) for key, value in summary.items()}


def proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux, Android) in MiB; None where that file is not readable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024.0, 3)  # the kernel writes kB
    except OSError:
        pass
    return None


def current_rss_mib() -> float | None:
    return proc_status_mib("VmRSS")


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process, preferring /proc's VmHWM over getrusage where both exist."""
    # ru_maxrss survives exec on Linux: a runner started from a large process (a test run that loaded
    # tensorflow) reports its parent's peak. VmHWM belongs to this program's own address space only.
    peak = proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows has no resource module
        return None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux and Android report KiB, macOS reports bytes.
    return round(max_rss / (1024.0 * 1024.0) if sys.platform == "darwin" else max_rss / 1024.0, 3)


def cpu_model() -> str:
    """The CPU's marketing name where /proc/cpuinfo has one (x86, many ARM boards); else platform's answer."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }


@dataclass
class Measurement:
    """What one benchmark measured, before it is flattened into the record."""

    model: LoadedModel
    init_ms: float
    first_inference_ms: float
    latencies: array
    elapsed_seconds: float
    rss_growth_mib: float | None


def measure(args: argparse.Namespace) -> Measurement:
    import_runtime, load = runtime_for(args.model)
    runtime = import_runtime()
    # The baseline is taken after the imports so that the growth is what the model itself costs.
    baseline_rss = current_rss_mib()
    start = time.perf_counter()
    model = load(runtime, args.model, args.threads, np.random.default_rng(args.seed))
    init_ms = (time.perf_counter() - start) * 1000.0
    first_inference_ms = milliseconds_of(model.invoke)
    for _ in range(args.warmup):
        model.invoke()
    latencies, elapsed_seconds = timed_runs(model.invoke, args.runs, args.min_seconds)
    final_rss = current_rss_mib()
    growth = None if baseline_rss is None or final_rss is None else round(final_rss - baseline_rss, 3)
    return Measurement(model, init_ms, first_inference_ms, latencies, elapsed_seconds, growth)


def record_of(args: argparse.Namespace, measured: Measurement) -> dict:
    model = measured.model
    return {
        "model": args.model,
        "model_bytes": os.path.getsize(args.model),
        "runtime": model.runtime,
        "runtime_version": model.runtime_version,
        "delegate": model.delegate,
        "threads": args.threads,
        "seed": args.seed,
        "init_ms": round(measured.init_ms, 4),
        "first_inference_ms": round(measured.first_inference_ms, 4),
        "warmup": args.warmup,
        "runs": len(measured.latencies),
        "min_seconds": args.min_seconds,
        "elapsed_seconds": round(measured.elapsed_seconds, 4),
        "latency_ms": latency_summary(measured.latencies),
        "peak_rss_mib": peak_rss_mib(),
        "rss_growth_mib": measured.rss_growth_mib,
        "inputs": model.inputs,
    } | machine_description()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_arguments(argv)
        record, exit_code = record_of(args, measure(args)), 0
    except RunnerError as error:
        record, exit_code = {"error": str(error), "argv": argv}, 1
    except Exception as error:  # anything unforeseen still ends as one parseable record
        record, exit_code = {"error": f"{type(error).__name__}: {error}", "argv": argv}, 1
    print(json.dumps(record), flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
