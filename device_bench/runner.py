"""Benchmark one .tflite or .onnx model on this machine and print one JSON record on stdout.

This file and py beside it are copied as-is to the device (a Raspberry Pi, an Android phone), so
they import only the standard library, numpy and whichever interpreter is installed there; never edgepack.

    python runner.py MODEL --runs 50 --warmup 5 --min-seconds 1 --threads 1 [--seed 0] [--input NAME=FILE.npy]
                           [--samples SAMPLES.npz --outputs OUTPUTS.npz]

The measurement follows TFLite's benchmark_model and onnxruntime_perf_test: load time, first inference,
warm-up runs, then timed runs until both ``--runs`` runs and ``--min-seconds`` have passed. Inputs are set
once before timing so each timed run measures only the runtime's own work. On failure the record holds an
"error" key and the exit code is non-zero.

With ``--samples``, after timing the runner runs each given sample and writes the outputs to ``--outputs``, so the
host can compare what the device computed with its own run of the same file. SAMPLES.npz holds one array per
input, keyed as the runtime names it (ONNX input names; a .tflite's signature keys, or its tensor names when it has
no signature), each of shape (samples, *input shape) in the file's own layout and dtype: sample i is fed exactly as
``array[i]``. OUTPUTS.npz is keyed the same way for the outputs, stacked the same way.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

try:
    import numpy as np
except ImportError:  # a bare device: main() reports it as one record, like a missing interpreter
    np = None

NUMPY_INSTALL_HINT = "pip install numpy"
TFLITE_INSTALL_HINT = "pip install ai-edge-litert (or tflite-runtime, or tensorflow)"
ONNX_INSTALL_HINT = "pip install onnxruntime"
# onnxruntime names element types as strings; these are the ones a benchmark input can have.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
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
    # For --samples, called after timing: the runtime's input keys -> (shape, dtype name), and a function running
    # one sample (keys -> arrays). Made late: LiteRT refuses invoke() while a signature runner holds the interpreter.
    sample_runner: Callable[[], tuple[dict[str, tuple[list, str]], Callable[[dict], dict]]]


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
    parser.add_argument("--input-shape", type=input_shape, action="append", default=[], metavar="NAME=DIMS",
                        help="shape of an input with dynamic dimensions, e.g. image=1x3x224x224")  # fmt: skip
    parser.add_argument("--input", type=input_file, action="append", default=[], metavar="NAME=FILE.npy",
                        help="feed this value, not random data (a sample rate, a state), e.g. sr=sr.npy")  # fmt: skip
    parser.add_argument("--sys-root", default="/sys", help="where sysfs is (tests point it at a fake tree)")
    parser.add_argument("--samples", help="after timing, run these inputs (.npz, see the module's docstring)")
    parser.add_argument("--outputs", help="where --samples' outputs go (.npz; default: SAMPLES-outputs.npz)")
    return parser.parse_args(argv)


def input_shape(text: str) -> tuple[str, list[int]]:
    """'image=1x3x224x224' -> ('image', [1, 3, 224, 224])."""
    name, _, dims = text.rpartition("=")
    try:
        shape = [int(dim) for dim in dims.lower().split("x")]
    except ValueError:
        shape = []
    if not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIMxDIMx..., e.g. image=1x3x224x224")
    return name, shape


def input_file(text: str) -> tuple[str, str]:
    """'sr=sr.npy' -> ('sr', 'sr.npy')."""
    name, _, path = text.partition("=")
    if not name or not path.endswith(".npy"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=FILE.npy, e.g. sr=sample_rate.npy")
    return name, path


def load_input_values(items: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    values = {}
    for name, path in items:
        try:
            values[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise RunnerError(f"--input {name}={path}: cannot read it as a .npy array ({error})") from error
    return values


def given_or_random(names: list[str], shape: list[int], dtype: type, rng: np.random.Generator,
                    values: dict[str, np.ndarray]) -> np.ndarray:  # fmt: skip
    """The value given for any of the input's ``names`` (in its dtype), else seeded random data."""
    name = next((n for n in names if n in values), None)
    if name is None:
        return random_input(shape, dtype, rng)
    return np.asarray(values[name]).astype(dtype, copy=False)


def is_dynamic(dim: object) -> bool:
    """onnxruntime gives a dynamic dimension as None or a name, LiteRT's shape signature as -1."""
    return not isinstance(dim, int | np.integer) or dim <= 0


def concrete_shape(names: list[str], shape: list, given: dict[str, list[int]]) -> list[int]:
    """The shape to run an input with: the one given for any of its ``names``, else its own with a dynamic batch
    (first axis) as 1. Any other dynamic dimension has no honest default: timing a detector on a 1x1 image measures
    nothing, so it must be given."""
    name = next((n for n in names if n in given), None)
    if name is not None:
        wanted = given[name]
        fits = len(wanted) == len(shape) and all(is_dynamic(d) or w == d for w, d in zip(wanted, shape, strict=True))
        if not fits:
            raise RunnerError(f"--input-shape {name}={'x'.join(map(str, wanted))} does not fit input {name!r} of "
                              f"shape {shape_text(shape)}: give every dimension, keeping the fixed ones")  # fmt: skip
        return wanted
    if any(is_dynamic(dim) for dim in shape[1:]):
        example = "x".join("1" if is_dynamic(dim) else str(dim) for dim in shape)
        raise RunnerError(f"input {names[0]!r} has dynamic dimensions {shape_text(shape)}; give its shape, e.g. "
                          f"--input-shape {names[0]}={example} with the sizes it will run at")  # fmt: skip
    return [1 if is_dynamic(dim) else int(dim) for dim in shape]


def shape_text(shape: list) -> str:
    return "[" + ", ".join("?" if is_dynamic(dim) and not isinstance(dim, str) else str(dim) for dim in shape) + "]"


def check_input_names(given: dict[str, list[int]], names: list[list[str]]) -> None:
    known = {name for aliases in names for name in aliases}
    unknown = sorted(set(given) - known)
    if unknown:
        raise RunnerError(f"--input-shape names {unknown}, not inputs of the model; its inputs: "
                          f"{[aliases[-1] for aliases in names]}")  # fmt: skip


def random_input(shape: list[int], dtype: type, rng: np.random.Generator) -> np.ndarray:
    """Seeded data for one input of a concrete ``shape``."""
    concrete = [int(dim) for dim in shape]
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
    distribution: str  # the pip package it came from: its wheel tag says which build (CPU, OS) is installed


def runtime_build(runtime: Runtime) -> dict:
    """Which build of the runtime this is: the installed wheel's tag (e.g. cp311-cp311-manylinux_2_27_aarch64)
    and onnxruntime's own build info."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        wheel = distribution(runtime.distribution).read_text("WHEEL") or ""
    except PackageNotFoundError:
        wheel = ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    build_info = getattr(runtime.module, "get_build_info", None)
    return {"wheel_tags": tags, "build_info": build_info() if callable(build_info) else None}


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
        return Runtime(module, name, runtime_version, distribution)
    raise RunnerError(f"no TFLite interpreter is installed; {TFLITE_INSTALL_HINT}")


def import_onnx_runtime() -> Runtime:
    try:
        import onnxruntime
    except ImportError as error:
        raise RunnerError(f"onnxruntime is not installed; {ONNX_INSTALL_HINT}") from error
    return Runtime(onnxruntime, "onnxruntime", onnxruntime.__version__, "onnxruntime")


def tflite_delegate(interpreter: object) -> str:
    """'xnnpack' when LiteRT's default CPU delegate took part of the graph, else 'none'."""
    # Without explicit delegates the only one applied is the built-in XNNPACK, which shows as a DELEGATE node.
    ops_details = getattr(interpreter, "_get_ops_details", None)
    if ops_details is None:
        return "unknown"
    return "xnnpack" if any(op["op_name"] == "DELEGATE" for op in ops_details()) else "none"


def tflite_input_names(detail: dict) -> list[str]:
    """A TFLite input's tensor name and the name it was given (the converter writes 'serving_default_NAME:0')."""
    name = detail["name"]
    plain = name.removeprefix("serving_default_").rsplit(":", 1)[0]
    return [name, plain] if plain != name else [name]


def set_tflite_inputs(interpreter: object, rng: np.random.Generator, given: dict[str, list[int]],
                      values: dict[str, np.ndarray] | None = None) -> list[dict]:  # fmt: skip
    """Give dynamic dimensions their sizes, allocate, and fill every input once."""
    details = interpreter.get_input_details()
    check_input_names(given, [tflite_input_names(d) for d in details])
    for detail in details:
        signature = [int(dim) for dim in detail.get("shape_signature", detail["shape"])]
        shape = concrete_shape(tflite_input_names(detail), signature, given)
        if shape != signature:
            interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    inputs = []
    for detail in interpreter.get_input_details():
        data = given_or_random(tflite_input_names(detail), list(detail["shape"]), detail["dtype"], rng, values or {})
        interpreter.set_tensor(detail["index"], data)
        inputs.append(describe_input(detail["name"], data))
    return inputs


def describe_input(name: str, data: np.ndarray) -> dict:
    return {"name": name, "shape": list(data.shape), "dtype": data.dtype.name}


def missing_custom_op(error: Exception) -> str | None:
    """LiteRT's 'Encountered unresolved custom op: X' as a sentence naming X (this file imports nothing of the
    project, so converters/tflite_graph.py's twin of this cannot be used here)."""
    found = re.search(r"unresolved custom op: (\w+)", str(error))
    if found is None:
        return None
    return (
        f"the file uses the custom op {found.group(1)!r}, which this runtime does not register; run it with a "
        "TFLite runtime built with that op (the one the file was made for), or rebuild the model without it"
    )


def load_tflite(runtime: Runtime, path: str, threads: int, rng: np.random.Generator, given: dict,
                values: dict | None = None) -> LoadedModel:  # fmt: skip
    try:
        interpreter = runtime.module.Interpreter(model_path=path, num_threads=threads)
        inputs = set_tflite_inputs(interpreter, rng, given, values)
    except (ValueError, RuntimeError) as error:
        raise RunnerError(f"{runtime.name} {runtime.version} could not load {path}: "
                          f"{missing_custom_op(error) or error}") from error  # fmt: skip
    delegate = tflite_delegate(interpreter)
    sample_runner = functools.partial(tflite_sample_runner, interpreter)
    return LoadedModel(interpreter.invoke, runtime.name, runtime.version, delegate, inputs, sample_runner)


def tflite_sample_runner(interpreter: object) -> tuple[dict, Callable]:
    """Run one sample the way edgepack's host sessions do: through the first signature, keyed by its keys (the
    ONNX names for edgepack's files); a file without a signature by its tensor names."""
    signatures = interpreter.get_signature_list()
    if signatures:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        return sample_specs(runner.get_input_details()), lambda feeds: runner(**feeds)
    details = {detail["name"]: detail for detail in interpreter.get_input_details()}

    def run_by_tensor_names(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, values in feeds.items():
            interpreter.set_tensor(details[name]["index"], values)
        interpreter.invoke()
        return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}

    return sample_specs(details), run_by_tensor_names


def sample_specs(details: dict[str, dict]) -> dict[str, tuple[list, str]]:
    shapes = {key: detail.get("shape_signature", detail["shape"]) for key, detail in details.items()}
    return {key: ([int(dim) for dim in shapes[key]], np.dtype(details[key]["dtype"]).name) for key in details}


def load_onnx(runtime: Runtime, path: str, threads: int, rng: np.random.Generator, given: dict,
              values: dict | None = None) -> LoadedModel:  # fmt: skip
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
    arguments = session.get_inputs()
    check_input_names(given, [[arg.name] for arg in arguments])
    feed = {arg.name: given_or_random([arg.name], concrete_shape([arg.name], arg.shape, given), ORT_DTYPES[arg.type],
                                      rng, values or {}) for arg in arguments}  # fmt: skip
    inputs = [describe_input(name, data) for name, data in feed.items()]
    sample_inputs = {arg.name: (list(arg.shape), ORT_DTYPES[arg.type]) for arg in arguments}
    output_names = [arg.name for arg in session.get_outputs()]

    def run_sample(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(None, feeds), strict=True))

    return LoadedModel(
        lambda: session.run(None, feed),
        runtime.name,
        runtime.version,
        "cpu",
        inputs,
        lambda: (sample_inputs, run_sample),
    )


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


def os_name() -> str | None:
    """The OS as its /etc/os-release names it ("Debian GNU/Linux 12 (bookworm)"); None where there is none
    (Android has no os-release; its version is in getprop, which the adb target does not read)."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path) as release:
                fields = dict(line.rstrip("\n").split("=", 1) for line in release if "=" in line)
        except OSError:
            continue
        return fields.get("PRETTY_NAME", "").strip('"') or None
    return None


def machine_description() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "os": os_name(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
    }


# --- What the device is doing while the runner measures: governor, temperature, throttling, energy.
# Every reading is optional: where a file or tool is absent the figure is None and the energy says "no sensor"
# with what was looked for; no figure is ever estimated. ``sys_root`` is where sysfs is, so tests can fake it.


def read_sys(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:  # absent on this kernel or device, or not readable by this user
        return None


def read_number(path: str, scale: float = 1.0) -> float | None:
    text = read_sys(path)
    try:
        return float(text) * scale
    except (TypeError, ValueError):
        return None


def hottest_temperature_c(sys_root: str) -> float | None:
    """The hottest thermal zone (the one that throttles first), in degrees Celsius; None where none is readable."""
    zones = glob.glob(os.path.join(sys_root, "class/thermal/thermal_zone*/temp"))
    readings = [value for value in (read_number(zone, 0.001) for zone in zones) if value is not None]
    return round(max(readings), 1) if readings else None


def vcgencmd(*arguments: str) -> str | None:
    """Output of a Raspberry Pi's firmware tool, None where there is no such tool or it fails."""
    tool = shutil.which("vcgencmd")
    if tool is None:
        return None
    try:
        done = subprocess.run([tool, *arguments], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


# Bits of `vcgencmd get_throttled` (Raspberry Pi documentation): now in the low bits, since boot from bit 16.
THROTTLE_BITS = {0: "under_voltage", 1: "arm_frequency_capped", 2: "throttled", 3: "soft_temperature_limit"}


def throttling() -> dict | None:
    output = vcgencmd("get_throttled")  # "throttled=0x50000"
    try:
        value = int(output.strip().partition("=")[2], 16)
    except (AttributeError, ValueError):
        return None
    flags = {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}
    return (
        {"raw": hex(value)}
        | flags
        | {f"{name}_occurred": bool(value >> bit + 16 & 1) for bit, name in THROTTLE_BITS.items()}
    )


def device_facts(sys_root: str, temperature_at_start: float | None) -> dict:
    cpufreq = os.path.join(sys_root, "devices/system/cpu/cpu0/cpufreq")
    return {
        "governor": read_sys(os.path.join(cpufreq, "scaling_governor")),
        "cpu_mhz": read_number(os.path.join(cpufreq, "scaling_cur_freq"), 0.001),
        "temperature_c_start": temperature_at_start,
        "temperature_c": hottest_temperature_c(sys_root),  # after the timed runs
        "throttled": throttling(),
    }


def energy_delta_uj(before: int, after: int, max_range: int) -> int:
    """A RAPL counter's increase; it wraps to zero past max_energy_range_uj."""
    return after - before if after >= before else after + max_range - before


def energy_result(method: str, scope: str, joules: float, seconds: float, runs: int) -> dict:
    return {
        "method": method,
        "scope": scope,
        "joules": round(joules, 6),
        "uj_per_inference": round(joules * 1e6 / runs, 3),
        "average_watts": round(joules / seconds, 4) if seconds > 0 else None,
        "seconds": round(seconds, 4),
    }


class RaplMeter:
    """Linux RAPL: cumulative energy counters of each CPU package, read before and after the timed runs."""

    def __init__(self, domains: list[str]):
        self.domains = domains
        self.before = [int(read_sys(os.path.join(domain, "energy_uj"))) for domain in domains]

    def stop(self, seconds: float, runs: int) -> dict:
        total = 0
        for domain, before in zip(self.domains, self.before, strict=True):
            after, max_range = (
                int(read_sys(os.path.join(domain, name))) for name in ("energy_uj", "max_energy_range_uj")
            )
            total += energy_delta_uj(before, after, max_range)
        return energy_result("rapl", "CPU packages, every process on the machine", total / 1e6, seconds, runs)


class SampledPowerMeter:
    """A sensor of present power (watts), sampled on a thread during the timed runs; energy = mean x time."""

    def __init__(self, method: str, scope: str, read_watts: Callable[[], float | None], interval: float = 0.1):
        self.method, self.scope, self.read_watts = method, scope, read_watts
        self.samples = [read_watts()]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, args=(interval,), daemon=True)
        self.thread.start()

    def sample(self, interval: float) -> None:
        while not self.done.wait(interval):
            self.samples.append(self.read_watts())

    def stop(self, seconds: float, runs: int) -> dict:
        self.done.set()
        self.thread.join()
        watts = [value for value in self.samples if value is not None]
        if not watts:  # the sensor stopped answering: no figure rather than a guess
            return {"method": "no sensor", "uj_per_inference": None, "looked_for": [f"{self.method} (no reading)"]}
        result = energy_result(self.method, self.scope, sum(watts) / len(watts) * seconds, seconds, runs)
        return result | {"samples": len(watts)}


class NoSensor:
    def __init__(self, looked_for: list[str]):
        self.looked_for = looked_for

    def stop(self, seconds: float, runs: int) -> dict:
        return {"method": "no sensor", "uj_per_inference": None, "looked_for": self.looked_for}


def rapl_packages(sys_root: str) -> list[str]:
    """Package-level RAPL domains with a readable counter (their sub-domains are parts of them, not extra)."""
    domains = sorted(glob.glob(os.path.join(sys_root, "class/powercap/intel-rapl:*")))
    packages = [domain for domain in domains if (read_sys(os.path.join(domain, "name")) or "").startswith("package")]
    return [domain for domain in packages if read_number(os.path.join(domain, "energy_uj")) is not None]


def ina_power_reader(sys_root: str) -> Callable[[], float | None] | None:
    """An INA219/INA226/INA260 power monitor's hwmon power1_input (microwatts), if one is present."""
    for folder in sorted(glob.glob(os.path.join(sys_root, "class/hwmon/hwmon*"))):
        power = os.path.join(folder, "power1_input")
        if read_sys(os.path.join(folder, "name")) in ("ina219", "ina226", "ina260") and read_number(power) is not None:
            return lambda: read_number(power, 1e-6)
    return None


# A rail's name may start with a digit (3V7_WL_SW_A); the unit letter ends the line.
PMIC_READING = re.compile(r"^\s*(\S+_[AV]) (?:current|volt)\(\d+\)=([-\d.]+)[AV]\s*$", re.MULTILINE)


def pmic_watts(text: str | None) -> float | None:
    """Sum of volts x amps over the rails a Pi 5 PMIC reports.

    `vcgencmd pmic_read_adc` prints one line per reading: "VDD_CORE_A current(7)=2.1A", "VDD_CORE_V volt(15)=0.87V".
    """
    readings = {match[0]: float(match[1]) for match in PMIC_READING.findall(text or "")}
    rails = [name[:-2] for name in readings if name.endswith("_A") and name[:-2] + "_V" in readings]
    return sum(readings[rail + "_A"] * readings[rail + "_V"] for rail in rails) if rails else None


def start_energy_meter(sys_root: str):
    """The best power sensor present: RAPL's counters, an INA on hwmon, a Pi 5's PMIC; else 'no sensor'."""
    packages = rapl_packages(sys_root)
    if packages:
        return RaplMeter(packages)
    ina = ina_power_reader(sys_root)
    if ina is not None:
        return SampledPowerMeter("hwmon ina", "the rail the INA power monitor is wired into", ina)
    if pmic_watts(vcgencmd("pmic_read_adc")) is not None:
        return SampledPowerMeter(
            "pi5 pmic", "the rails of the Pi 5 PMIC (SoC, memory, I/O)", lambda: pmic_watts(vcgencmd("pmic_read_adc"))
        )
    looked_for = [
        "intel-rapl*/energy_uj under " + sys_root + "/class/powercap",
        "an ina219/ina226/ina260 hwmon power1_input",
        "vcgencmd pmic_read_adc",
    ]
    return NoSensor(looked_for)


@dataclass
class Measurement:
    """What one benchmark measured, before it is flattened into the record."""

    model: LoadedModel
    runtime: Runtime
    init_ms: float
    first_inference_ms: float
    latencies: array
    elapsed_seconds: float
    rss_growth_mib: float | None
    energy: dict
    temperature_at_start: float | None


def measure(args: argparse.Namespace) -> Measurement:
    if np is None:
        raise RunnerError(f"numpy is not installed; {NUMPY_INSTALL_HINT}")
    import_runtime, load = runtime_for(args.model)
    temperature_at_start = hottest_temperature_c(args.sys_root)
    runtime = import_runtime()
    # The baseline is taken after the imports so that the growth is what the model itself costs.
    baseline_rss = current_rss_mib()
    start = time.perf_counter()
    values = load_input_values(args.input)
    # A given value fixes its input's shape (and is checked against the input's names like a given shape).
    given = dict(args.input_shape) | {name: list(value.shape) for name, value in values.items()}
    model = load(runtime, args.model, args.threads, np.random.default_rng(args.seed), given, values)
    init_ms = (time.perf_counter() - start) * 1000.0
    first_inference_ms = milliseconds_of(model.invoke)
    for _ in range(args.warmup):
        model.invoke()
    meter = start_energy_meter(args.sys_root)
    latencies, elapsed_seconds = timed_runs(model.invoke, args.runs, args.min_seconds)
    energy = {"measured": meter.stop(elapsed_seconds, len(latencies))}
    final_rss = current_rss_mib()
    growth = None if baseline_rss is None or final_rss is None else round(final_rss - baseline_rss, 3)
    return Measurement(
        model, runtime, init_ms, first_inference_ms, latencies, elapsed_seconds, growth, energy, temperature_at_start
    )


def record_of(args: argparse.Namespace, measured: Measurement) -> dict:
    model = measured.model
    return (
        {
            "model": args.model,
            "model_bytes": os.path.getsize(args.model),
            "runtime": model.runtime,
            "runtime_version": model.runtime_version,
            "runtime_build": runtime_build(measured.runtime),
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
            "energy": measured.energy,
        }
        | machine_description()
        | device_facts(args.sys_root, measured.temperature_at_start)
    )


# --- Verification samples: run after timing (so they change no figure above), outputs written for the host.


def read_samples(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise RunnerError(f"--samples {path} is not a readable .npz file: {error}") from error


def check_samples(path: str, samples: dict[str, np.ndarray], specs: dict[str, tuple[list, str]]) -> int:
    """The number of samples, after checking every input has an array of its dtype and per-sample shape."""
    if set(samples) != set(specs):
        raise RunnerError(f"--samples {path} holds arrays {sorted(samples)}; the model's inputs are {sorted(specs)}")
    counts = {len(values) if values.ndim else 0 for values in samples.values()}
    if len(counts) != 1 or 0 in counts:
        raise RunnerError(f"--samples {path}: every array needs the same number (>= 1) of samples on axis 0")
    for key, (shape, dtype) in specs.items():
        values = samples[key]
        fits = values.ndim == len(shape) + 1 and all(
            is_dynamic(dim) or dim == size for dim, size in zip(shape, values.shape[1:], strict=True)
        )
        if values.dtype.name != dtype or not fits:
            raise RunnerError(f"--samples {path}: {key!r} is {values.dtype.name} {list(values.shape)}; the model takes "
                              f"{dtype} {shape_text(shape)} per sample (axis 0 counts samples)")  # fmt: skip
    return counts.pop()


def run_samples(model: LoadedModel, samples_path: str, outputs_path: str) -> dict:
    """Run every sample once, write the stacked outputs (.npz, atomically) and describe them for the record."""
    samples = read_samples(samples_path)
    specs, run_sample = model.sample_runner()
    count = check_samples(samples_path, samples, specs)
    runs = [run_sample({key: values[index] for key, values in samples.items()}) for index in range(count)]
    outputs = {key: np.stack([np.asarray(run[key]) for run in runs]) for key in runs[0]}
    partial = outputs_path + ".partial.npz"  # np.savez adds .npz to a name without it
    np.savez(partial, **outputs)
    os.replace(partial, outputs_path)
    described = {key: {"shape": list(array.shape), "dtype": array.dtype.name} for key, array in outputs.items()}
    return {"samples": count, "outputs_file": outputs_path, "outputs": described}


def outputs_path_for(args: argparse.Namespace) -> str:
    return args.outputs or os.path.splitext(args.samples)[0] + "-outputs.npz"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_arguments(argv)
        measured = measure(args)
        record, exit_code = record_of(args, measured), 0
        if args.samples:
            record["verification"] = run_samples(measured.model, args.samples, outputs_path_for(args))
    except RunnerError as error:
        record, exit_code = {"error": str(error), "argv": argv}, 1
    except Exception as error:  # anything unforeseen still ends as one parseable record
        record, exit_code = {"error": f"{type(error).__name__}: {error}", "argv": argv}, 1
    print(json.dumps(record), flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
