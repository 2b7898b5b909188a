"""What calibration costs over plain inference, and whether its memory stays flat as the sample count grows.

    .venv/bin/python benchmarks/calibration_cost.py [--samples 256 1024] [--size 96] [--repeats 3] [--jobs ...]

MobileNetV2 (width 1.0, random weights with BatchNorm statistics from random inputs) at 1x3xSIZExSIZE (batch fixed
at 1, as exported), exported to ONNX once. For each N, each job runs in its own process over the same N
random-normal samples, in ``--repeats`` interleaved rounds of which each figure's minimum is kept (a shared machine
only ever adds time): plain onnxruntime inference one sample a call (``inference``: default session options, as the
model ships and as calibration's own session), the same with the batch freed and as many samples a call as
calibration runs (``batched``: what batching alone buys), calibration's reader with every planned tensor exposed
and nothing done with the values (``exposed``: the floor any calibration that reads the tensors pays), then
``calibration.ptq.calibrate`` with each method (``auto``: fitted on 80% of the N samples, scored on the rest).
Imports happen before the clock starts, for every job alike.
Printed: wall seconds and process CPU seconds (user + system, steadier than wall time on a shared machine), each
as a ratio to plain one-sample inference's (target <= 1.5x), and peak RSS growth during the job (ru_maxrss after
minus before, with the samples already in memory), so memory that grows with N shows as a growth that differs
between N values. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INPUT = "image"
JOBS = ["inference", "batched", "exposed", "minmax", "moving_average", "percentile", "entropy", "mse", "auto"]
METHODS = JOBS[3:]
RATIO_TARGET = 1.5


def export_mobilenet_v2(path: Path, size: int) -> Path:
    import torch

    from tests.converters.arch_vision import MobileNetV2
    from tests.converters.torch_check import calibrate_batchnorm, export

    module = calibrate_batchnorm(MobileNetV2(), [4, 3, size, size])
    example = (torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),)
    return export(module, path, example, [INPUT], ["logits"])


def samples(count: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal([count, 3, size, size], dtype=np.float32)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Lower the high-water mark to the current RSS (Linux >= 4.0), so imports' transient peaks do not hide the
    job's; where that is not allowed, growth is measured from the earlier peak (and may read 0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def plain_inference(model_path: Path, data: np.ndarray) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for index in range(len(data)):
        session.run(None, {INPUT: data[index : index + 1]})


def onnx_model(model_path: Path):
    import onnx

    return onnx.load(str(model_path))


def planned_tensors(model_path: Path):
    from edgepack.calibration.plan import plan_quantization

    model = onnx_model(model_path)
    return model, plan_quantization(model).activations


def calibration_batch(model, tensors, data: np.ndarray) -> int:
    """Samples a call that calibration's reader picks for this model (the first batch is its probe)."""
    from edgepack.calibration.collect import read_tensors

    from edgepack.core.dataset import ArrayDataset

    return [b.samples for b in read_tensors(model, tensors, ArrayDataset({INPUT: data[:64]}))][1]


def batched_inference(model_path: Path, data: np.ndarray, size: int) -> None:
    """Plain inference of the batch-freed copy, ``size`` samples a call (calibration's): what batching alone buys."""
    import onnxruntime as ort
    from edgepack.calibration.collect import free_batch_copy

    model = onnx_model(model_path)
    session = ort.InferenceSession(free_batch_copy(model).SerializeToString(), providers=["CPUExecutionProvider"])
    for start in range(0, len(data), size):
        session.run(None, {INPUT: data[start : start + size]})


def exposed_inference(model_path: Path, data: np.ndarray) -> None:
    """Calibration's own reader (every planned tensor exposed, many samples a call), nothing done with the values."""
    from edgepack.calibration.collect import read_tensors

    from edgepack.core.dataset import ArrayDataset

    model, tensors = planned_tensors(model_path)
    for _ in read_tensors(model, tensors, ArrayDataset({INPUT: data})):
        pass


def calibration_run(model_path: Path, data: np.ndarray, method: str) -> None:
    import onnx
    from edgepack.calibration.ptq import QuantScheme, calibrate

    from edgepack.core.dataset import ArrayDataset

    scheme = QuantScheme(method=method, samples=len(data))
    calibrate(onnx.load(str(model_path)), ArrayDataset({INPUT: data}), scheme)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_job(job: str, model_path: Path, count: int, size: int) -> dict:
    """In this process: the job's wall seconds and its peak RSS growth, with the samples already loaded."""
    import edgepack.calibration.ptq  # noqa: F401
    import edgepack.converters.verify  # noqa: F401  (calibrate imports it lazily)
    import onnx  # noqa: F401  (imported before the baseline, so the growth and time are the job's, not the import's)
    import onnxruntime  # noqa: F401

    data = samples(count, size)
    per_call = calibration_batch(*planned_tensors(model_path), data) if job == "batched" else 1  # off the clock
    reset_peak_rss()
    before, started, cpu_started = peak_rss_mib(), time.perf_counter(), cpu_seconds()
    if job == "inference":
        plain_inference(model_path, data)
    elif job == "batched":
        batched_inference(model_path, data, per_call)
    elif job == "exposed":
        exposed_inference(model_path, data)
    else:
        calibration_run(model_path, data, job)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu_started,
            "rss_growth_mib": peak_rss_mib() - before, "data_mib": data.nbytes / 2**20}  # fmt: skip


def in_subprocess(job: str, model_path: Path, count: int, size: int) -> dict:
    """Each job (the export too) in a fresh process: a child's ru_maxrss starts at its parent's peak (exec keeps
    it), so this parent must stay small for the children's growth figures to mean anything."""
    command = [sys.executable, __file__, "--job", job, "--model", str(model_path), "--samples", str(count),
               "--size", str(size)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def fastest(runs: list[dict]) -> dict:
    """Each figure's minimum over the rounds: other load on the machine only ever adds time."""
    return {key: min(run[key] for run in runs) for key in runs[0]}


def print_results(results: dict[tuple[str, int], dict], counts: list[int]) -> None:
    print("| samples | job | wall s | / inference | CPU s | / inference | peak RSS growth MiB | samples MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for count in counts:
        plain = results[("inference", count)]
        for job in (j for j in JOBS if (j, count) in results):
            figures = results[(job, count)]
            print(f"| {count} | {job} | {figures['seconds']:.2f} | {figures['seconds'] / plain['seconds']:.2f}x | "
                  f"{figures['cpu_seconds']:.2f} | {figures['cpu_seconds'] / plain['cpu_seconds']:.2f}x | "
                  f"{figures['rss_growth_mib']:.1f} | {figures['data_mib']:.1f} |")  # fmt: skip


def print_targets(results: dict[tuple[str, int], dict], counts: list[int]) -> None:
    print("Targets:")
    for count in counts:
        plain = results[("inference", count)]["seconds"]
        for job in (j for j in METHODS if (j, count) in results):
            ratio = results[(job, count)]["seconds"] / plain
            word = "PASS" if ratio <= RATIO_TARGET else "FAIL"
            print(f"  {word}  {job}, N={count}: {ratio:.2f}x plain inference wall time (target <= {RATIO_TARGET}x)")
    for job in (j for j in METHODS if (j, counts[0]) in results):
        growth = [results[(job, count)]["rss_growth_mib"] for count in counts]
        print(f"  {job}: peak RSS growth {' -> '.join(f'{g:.1f}' for g in growth)} MiB for N = "
              f"{' -> '.join(str(c) for c in counts)} (flat memory: about the same growth)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--size", type=int, default=96, help="input height and width")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every job, interleaved; the fastest counts")
    parser.add_argument("--jobs", nargs="+", choices=JOBS[1:], default=JOBS[1:], help="jobs besides plain inference")
    parser.add_argument("--job", choices=[*JOBS, "export"], help=argparse.SUPPRESS)  # one job, in a child process
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job == "export":
        print(json.dumps({"path": str(export_mobilenet_v2(args.model, args.size))}))
        return
    if args.job:
        print(json.dumps(run_job(args.job, args.model, args.samples[0], args.size)))
        return
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(in_subprocess("export", Path(folder) / "mobilenet_v2.onnx", 1, args.size)["path"])
        jobs = ["inference", *args.jobs]
        rounds = [{(job, n): in_subprocess(job, model_path, n, args.size) for n in args.samples for job in jobs}
                  for _ in range(args.repeats)]  # fmt: skip
    results = {key: fastest([r[key] for r in rounds]) for key in rounds[0]}
    print(f"MobileNetV2 (width 1.0) at 1x3x{args.size}x{args.size}, batch 1, random-normal samples, "
          f"fastest of {args.repeats} interleaved rounds")  # fmt: skip
    print_results(results, args.samples)
    print_targets(results, args.samples)


if __name__ == "__main__":
    main()
