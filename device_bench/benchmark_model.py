"""TFLite's prebuilt ``benchmark_model`` binary: its flags, and its log turned into the runner's record shape.

Where an app developer has the binary for the device (an Android phone without Python), ssh and adb targets run
it instead of runner.py. Its log gives init, first inference, warm-up, and over the timed runs count, min, max,
mean, std and (in releases since about 2021) p5, median and p95, all in microseconds. It gives no p90 or p99, and
reads no power sensor: those fields are None rather than estimated. The lines parsed look like:

    INFO: count=50 first=1060 curr=990 min=970 max=1100 avg=1000 std=20 p5=975 median=995 p95=1080
    INFO: Inference timings in us: Init: 12345, First inference: 1234, Warmup (avg): 1100, Inference (avg): 1000
    INFO: Memory footprint delta from the start of the tool (MB): init=3.5 overall=4.25
    INFO: Overall peak memory footprint (MB) via periodic monitoring: 10.5
"""

from __future__ import annotations

import re

from edgepack.device_bench.options import BenchOptions

from edgepack.core.errors import BenchError

NUMBER = r"([-+\d.eE]+)"
TIMED_RUNS = re.compile(
    rf"count={NUMBER} first={NUMBER} curr=\S+ min={NUMBER} max={NUMBER} avg={NUMBER} std={NUMBER}"
    rf"(?: p5={NUMBER} median={NUMBER} p95={NUMBER})?"
)
SUMMARY = re.compile(rf"Inference timings in us: Init: {NUMBER}, First inference: {NUMBER}")
MEMORY_DELTA = re.compile(rf"Memory footprint delta from the start of the tool \(MB\): init={NUMBER} overall={NUMBER}")
PEAK_MEMORY = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {NUMBER}")
XNNPACK_LINE = "Created TensorFlow Lite XNNPACK delegate"
# key=value lines whatever fails on the device (a missing file prints an empty value, never shifts a line).
FACTS_SCRIPT = (
    'echo "machine=$(uname -m 2>/dev/null)"; echo "cores=$(nproc 2>/dev/null)"; '
    'echo "governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)"; '
    'echo "cpu=$(getprop ro.soc.model 2>/dev/null)"; '
    # os-release's PRETTY_NAME on Linux boards; Android has no os-release, but getprop names its release.
    'echo "os=$( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || '
    '{ v=$(getprop ro.build.version.release 2>/dev/null) && [ -n "$v" ] && echo "Android $v"; })"'
)


def arguments(device_model: str, options: BenchOptions) -> list[str]:
    (threads,) = options.thread_counts
    return [
        f"--graph={device_model}",
        f"--num_threads={threads}",
        f"--num_runs={options.runs}",
        f"--min_secs={options.min_seconds}",
        f"--warmup_runs={options.warmup}",
        "--warmup_min_secs=0",  # warm-up by count only, as the Python runner does
        "--report_peak_memory_footprint=true",
        *input_shape_arguments(options.input_shapes),
    ]


def input_shape_arguments(shapes: dict[str, list[int]]) -> list[str]:
    """benchmark_model's spelling: --input_layer=a,b --input_layer_shape=1,224,224,3:1,10."""
    if not shapes:
        return []
    layers = ",".join(shapes)
    dims = ":".join(",".join(str(d) for d in shape) for shape in shapes.values())
    return [f"--input_layer={layers}", f"--input_layer_shape={dims}"]


def microseconds_to_ms(text: str | None) -> float | None:
    return None if text is None else round(float(text) / 1000.0, 6)


def latency_from(match: re.Match) -> dict:
    _, _, low, high, mean, std, p5, median, p95 = (microseconds_to_ms(value) for value in match.groups())
    return {"mean": mean, "std": std, "min": low, "p50": median, "p90": None, "p99": None, "max": high} | {
        "p5": p5,
        "p95": p95,
    }


def record_from_output(log: str, options: BenchOptions) -> dict:
    """The runner-shaped record from benchmark_model's log; a BenchError when the timings are not in it."""
    timed_lines, summary = list(TIMED_RUNS.finditer(log)), SUMMARY.search(log)
    if not timed_lines or summary is None:
        raise BenchError(f"benchmark_model printed no timings; its output ends: {log.strip()[-1500:]}")
    timed = timed_lines[-1]  # the warm-up prints the same kind of line first
    delta, peak = MEMORY_DELTA.search(log), PEAK_MEMORY.search(log)
    (threads,) = options.thread_counts
    return {
        "runtime": "tflite benchmark_model",
        "runtime_version": "unknown",  # the tool does not print its version
        "runtime_build": {"wheel_tags": [], "build_info": None},  # a binary the user built or downloaded
        "delegate": "xnnpack" if XNNPACK_LINE in log else "none",
        "threads": threads,
        "seed": None,  # the tool fills inputs with its own random data
        "init_ms": microseconds_to_ms(summary.group(1)),
        "first_inference_ms": microseconds_to_ms(summary.group(2)),
        "warmup": options.warmup,
        "runs": int(float(timed.group(1))),
        "min_seconds": options.min_seconds,
        "elapsed_seconds": None,
        "latency_ms": latency_from(timed),
        "peak_rss_mib": float(peak.group(1)) if peak else None,
        "rss_growth_mib": float(delta.group(2)) if delta else None,
        "inputs": None,
        "energy": {"measured": {"method": "no sensor", "reason": "benchmark_model reads no power sensor"}},
    }


def facts_from_output(text: str) -> dict:
    """Device facts from FACTS_SCRIPT's key=value lines; what the device did not tell is None."""
    facts = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    cores = facts.get("cores", "").strip()
    return {
        "machine": facts.get("machine", "").strip() or None,
        "cores": int(cores) if cores.isdigit() else None,
        "governor": facts.get("governor", "").strip() or None,
        "cpu": facts.get("cpu", "").strip() or None,
        "os": facts.get("os", "").strip() or None,
        "python": None,
        "numpy": None,
        "platform": None,
        "cpu_mhz": None,
        "temperature_c_start": None,
        "temperature_c": None,
        "throttled": None,
    }
