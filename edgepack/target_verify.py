"""Verification on a benchmark target: run the same samples through the same file on the target and on the host,
in the same runtime, and measure how far apart the outputs are (``edgepack bench --verify DATA.npz``).

The samples are fed as host verification feeds each runtime (converters.verify.runtime_samples: its layout,
quantized for an integer input), the outputs are brought back the same way (outputs_from_runtime) and compared
with converters.verify.compare, so a figure here means what it means in a pack's verification.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.calibration.sources import load_npz_dataset
from edgepack.converters.output_steps import output_steps
from edgepack.converters.runtime import open_session
from edgepack.converters.verify import compare, outputs_from_runtime, runtime_samples
from edgepack.core.artifacts import TensorSpec
from edgepack.core.dataset import ArrayDataset, check_dataset
from edgepack.device_bench import BenchOptions, TargetRun, run_on_target

# The host run only computes outputs: one timed run, no warm-up.
OUTPUTS_ONLY = {"runs": 1, "warmup": 0, "min_seconds": 0.0}


def bench_and_verify(model_path: Path, target: str, options: BenchOptions, data_path: Path) -> list[dict]:
    """One benchmark record per thread count, each with ``verification``: the target's outputs on the samples of
    ``data_path`` against the host's, per output (see ``agreement``)."""
    session = open_session(model_path)
    dataset = load_samples(data_path, session.inputs)
    batch_size = max(session.inputs[0].shape[0], 1)
    samples, counts = runtime_samples(session, dataset, batch_size)
    steps = output_steps(model_path)
    records = []
    for threads in options.thread_counts:
        on_target = run_on_target(model_path, target, samples, options.with_threads(threads))
        host_options = options.model_copy(update=OUTPUTS_ONLY | {"threads": threads})
        on_host = run_on_target(model_path, "host", samples, host_options)
        figures = agreement(session, on_target, on_host, counts, steps)
        records.append(on_target.record | {"verification": figures | {"samples": len(dataset), "data": str(data_path)}})
    return records


def load_samples(data_path: Path, inputs: list[TensorSpec]) -> ArrayDataset:
    """The .npz as `edgepack convert --calib` takes it: one array per input, samples on axis 0, the ONNX layout."""
    dataset = load_npz_dataset(Path(data_path), [spec.name for spec in inputs])
    shapes = {spec.name: onnx_shape(spec) for spec in inputs}
    # An integer input is given as real values and quantized as verification quantizes it.
    dtypes = {spec.name: "float32" if spec.quantization else spec.dtype for spec in inputs}
    check_dataset(dataset, shapes, dtypes, f"--verify {data_path}")
    return dataset


def onnx_shape(spec: TensorSpec) -> list[int]:
    """The ONNX-layout shape of a runtime tensor (runtime = onnx.transpose(perm_from_onnx))."""
    if not spec.perm_from_onnx:
        return list(spec.shape)
    shape = [0] * len(spec.shape)
    for runtime_axis, onnx_axis in enumerate(spec.perm_from_onnx):
        shape[onnx_axis] = spec.shape[runtime_axis]
    return shape


def agreement(
    session, on_target: TargetRun, on_host: TargetRun, counts: list[int], steps: dict[str, float | None]
) -> dict:
    """Per output: max/mean abs error, cosine and SQNR of the target against the host and, for an output on an
    integer grid, how many of its steps apart they are (max, and the share within one step)."""
    host = outputs_from_runtime(session, on_host.outputs, counts)
    device = outputs_from_runtime(session, on_target.outputs, counts)
    comparisons, _ = compare(host, device, relative_tolerance=None, classifier=False)
    outputs = []
    for comparison in comparisons:
        figures = comparison.model_dump(include={"output", "max_abs_error", "mean_abs_error", "cosine_similarity",
                                                 "sqnr_db"})  # fmt: skip
        name = comparison.output
        outputs.append(figures | steps_apart(host[name], device[name], steps.get(name)))
    facts = ("machine", "os", "python", "runtime", "runtime_version", "runtime_build")
    return {"against": "host", "host": {key: on_host.record.get(key) for key in facts}, "outputs": outputs}


def steps_apart(host: np.ndarray, device: np.ndarray, step: float | None) -> dict:
    if step is None:
        return {"output_step": None, "max_steps": None, "within_one_step": None}
    apart = np.abs(host.astype(np.float64) - device.astype(np.float64)) / step
    # A thousandth of a step absorbs float rounding of dequantized values; a real difference is a whole step.
    return {"output_step": step, "max_steps": float(np.round(apart.max(), 3)),
            "within_one_step": float(np.mean(apart <= 1.0 + 1e-3))}  # fmt: skip
