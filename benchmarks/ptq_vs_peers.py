"""edgepack's int8 against the standard tools' defaults, on the same model and the same calibration samples.

    .venv/bin/python benchmarks/ptq_vs_peers.py [--models digits mobilenet_v2] [--methods minmax percentile ...]
                                                [--runs 200] [--keep DIR]

Per model, one table: edgepack's four artifacts (``pack`` with export, convert, quantize), then
- onnxruntime ``quantize_static`` with its defaults (QDQ, s8 activations, per-tensor weights, MinMax) on the run's
  float ONNX file (a copy: tools may rewrite their input), calibrated on the same samples;
- the TFLite converter's default full-integer quantization (``representative_dataset`` with the same samples,
  ``TFLITE_BUILTINS_INT8``, float I/O) on edgepack's own lowering of the same ONNX file, so the only difference
  from edgepack's TFLite int8 is who calibrated.
Every file is measured the same way: top-1 in its own runtime, bytes, host p50 (device_bench, 1 thread), and the
cosine of its outputs to the float ONNX outputs on the evaluation inputs.

Models: the bundled digits CNN (trained here, ~10 s; calibration: the first 256 train samples; evaluation: the 360
test samples) and MobileNetV2 (width 1.0, 1x3x224x224, random weights with BatchNorm statistics from random inputs;
calibration: 64 random-normal samples; evaluation: 16 other random-normal samples, so no accuracy).
Targets are printed with pass/fail; nothing is asserted (a shared machine's timings vary from run to run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.calibration.sources import digits_split  # noqa: E402
from edgepack.converters.runtime import open_session  # noqa: E402
from edgepack.converters.verify import predict  # noqa: E402
from edgepack.device_bench import BenchOptions, bench  # noqa: E402

from edgepack.core.artifacts import to_runtime_layout  # noqa: E402
from edgepack.core.dataset import ArrayDataset
from edgepack.examples import digits  # noqa: E402
from edgepack.recipe import parse_recipe  # noqa: E402
from edgepack.running.pipeline import pack  # noqa: E402
from tests.converters.arch_vision import MobileNetV2  # noqa: E402
from tests.converters.torch_check import calibrate_batchnorm  # noqa: E402

INPUT = "image"
DIGITS_CALIBRATION_SAMPLES = 256
MOBILENET_SHAPE = [1, 3, 224, 224]
MOBILENET_CALIBRATION_SAMPLES = 64
MOBILENET_EVALUATION_SAMPLES = 16
LARGE_MODEL_PARAMETERS = 1_000_000
ACCURACY_MARGIN = 0.005  # int8 within 0.5 point of float
SIZE_RATIO_TARGET = 3.9
TFLITE_LATENCY_RATIO_TARGET = 0.6
COLUMNS = ["artifact", "tool", "accuracy", "cos vs onnx-fp32", "bytes", "p50 ms", "p50 / fp32 p50 (same format)"]


@dataclass
class Case:
    """One model: the recipe to pack, its calibration samples, its evaluation samples (labels or none)."""

    name: str
    recipe: dict
    calibration: ArrayDataset
    evaluation: ArrayDataset
    parameters: int


@dataclass
class Row:
    artifact: str
    tool: str
    format: str
    precision: str
    path: Path
    accuracy: float | None
    cosine: float
    bytes: int
    p50_ms: float


# ---- the models ------------------------------------------------------------------------------------------------


def digits_case(folder: Path) -> Case:
    weights = folder / "digits_cnn.pt"
    digits.train(weights)
    train_images, _ = digits_split("train")
    test_images, test_labels = digits_split("test")
    recipe = {
        "name": "digits_cnn",
        "model": {"factory": "edgepack.examples.digits:build_model", "weights": str(weights),
                  "inputs": [{"name": INPUT, "shape": [1, 1, 8, 8]}], "output_names": ["logits"]},
        "data": {"source": "digits"},
        "verify": {"samples": 64},
    }  # fmt: skip
    calibration = ArrayDataset({INPUT: train_images[:DIGITS_CALIBRATION_SAMPLES]})
    parameters = sum(p.numel() for p in digits.build_model().parameters())
    return Case("digits CNN", recipe, calibration, ArrayDataset({INPUT: test_images}, test_labels), parameters)


def mobilenet_v2_case(folder: Path) -> Case:
    module = calibrate_batchnorm(MobileNetV2(), [4, *MOBILENET_SHAPE[1:]])
    weights = folder / "mobilenet_v2.pt"
    torch.save(module.state_dict(), weights)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal([MOBILENET_CALIBRATION_SAMPLES, *MOBILENET_SHAPE[1:]], dtype=np.float32)
    evaluation = rng.standard_normal([MOBILENET_EVALUATION_SAMPLES, *MOBILENET_SHAPE[1:]], dtype=np.float32)
    npz = folder / "mobilenet_v2_calibration.npz"
    np.savez(npz, **{INPUT: calibration})
    recipe = {
        "name": "mobilenet_v2",
        "model": {"factory": "tests.converters.arch_vision:MobileNetV2", "weights": str(weights),
                  "inputs": [{"name": INPUT, "shape": MOBILENET_SHAPE}], "output_names": ["logits"]},
        "verify": {"samples": 16},
        "calibration_data": str(npz),
    }  # fmt: skip
    parameters = sum(p.numel() for p in module.parameters())
    return Case("MobileNetV2 (width 1.0, 224x224)", recipe, ArrayDataset({INPUT: calibration}),
                ArrayDataset({INPUT: evaluation}), parameters)  # fmt: skip


CASES = {"digits": digits_case, "mobilenet_v2": mobilenet_v2_case}


# ---- edgepack --------------------------------------------------------------------------------------------------


def edgepack_recipe(case: Case, method: str, bench_options: dict) -> dict:
    recipe = dict(case.recipe)
    quantize = {"stage": "quantize", "method": method, "samples": len(case.calibration)}
    if "calibration_data" in recipe:
        quantize["calibration_data"] = recipe.pop("calibration_data")
    stages = [{"stage": "export"}, {"stage": "convert", "to": ["tflite"]}, quantize]
    return recipe | {"stages": stages, "bench": bench_options, "robustness": None}


def run_edgepack(case: Case, method: str, run_dir: Path, bench_options: dict) -> tuple[dict, float]:
    """One pack in ``run_dir``; a second method in the same folder redoes only quantize and what follows."""
    started = time.perf_counter()
    recipe = parse_recipe(edgepack_recipe(case, method, bench_options))
    results = pack(recipe, out=run_dir, quiet=True).results
    return results, time.perf_counter() - started


def edgepack_rows(results: dict, run_dir: Path, method: str, evaluation: ArrayDataset, reference) -> list[Row]:
    rows = []
    for artifact in results["artifacts"]:
        if artifact["format"] == "torch" or (artifact["precision"] == "fp32" and method != "minmax"):
            continue
        path = run_dir / artifact["path"]
        accuracy = (artifact.get("accuracy") or {}).get("top1")
        name = artifact["name"] if artifact["precision"] == "fp32" else f"{artifact['name']} ({method})"
        rows.append(Row(name, "edgepack", artifact["format"], artifact["precision"], path, accuracy,
                        cosine_to(reference, open_session(path), evaluation), artifact["bytes"],
                        artifact["bench"][0]["latency_ms"]["p50"]))  # fmt: skip
    return rows


def agreement_lines(results: dict, method: str) -> list[str]:
    lines = []
    for artifact in results["artifacts"]:
        for output, figures in artifact["details"].get("agreement_with_onnx", {}).items():
            lines.append(
                f"  {artifact['name']} ({method}) vs onnx-int8, output {output!r}: {figures['within_one_step']:.1%} "
                f"of values within one output step, max {figures['max_steps']:.1f} steps "
                f"({figures['samples']} samples)"
            )
    return lines


# ---- the peers -------------------------------------------------------------------------------------------------


class SampleReader:
    """onnxruntime's calibration contract over our samples, one at a time (the model's batch is 1)."""

    def __init__(self, dataset: ArrayDataset):
        self._batches = dataset.batches(1)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def onnxruntime_default_int8(float_onnx: Path, out: Path, calibration: ArrayDataset) -> Path:
    from onnxruntime.quantization import quantize_static

    source = out.with_name("peer_input.fp32.onnx")
    shutil.copyfile(float_onnx, source)  # never hand the run's file to a tool that may rewrite it
    quantize_static(str(source), str(out), SampleReader(calibration))
    return out


def tflite_default_int8(float_onnx: Path, out: Path, calibration: ArrayDataset):
    """Full int8 the TFLite converter's way on edgepack's lowering; returns the lowering's specs (layout)."""
    import tensorflow as tf
    from edgepack.converters.onnx_to_tf import lower_to_tf, prepare_model

    lowered = lower_to_tf(prepare_model(float_onnx))

    def representative_dataset():
        for batch in calibration.batches(1):
            yield [to_runtime_layout(batch[spec.name], spec) for spec in lowered.inputs]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([lowered.function], lowered.module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    out.write_bytes(converter.convert())
    return lowered


def peer_session(path: Path, lowered=None):
    """A session for a peer's file; a TFLite one gets the lowering's specs (NHWC image), which it does not carry."""
    session = open_session(path)
    if lowered is not None:
        session.inputs, session.outputs = lowered.inputs, lowered.outputs
    return session


def peer_row(name: str, tool: str, path: Path, session, evaluation: ArrayDataset, reference, options) -> Row:
    outputs = predict(session, evaluation, batch_size=1)
    p50 = bench(path, target="host", options=options)["latency_ms"]["p50"]
    return Row(name, tool, path.suffix[1:], "int8", path, top1(outputs, evaluation), cosine(reference, outputs),
               path.stat().st_size, p50)  # fmt: skip


def peer_rows(run_dir: Path, case: Case, reference, options: BenchOptions) -> tuple[list[Row], dict]:
    float_onnx = next((run_dir / "artifacts").glob("*.fp32.onnx"))
    folder = run_dir / "peers"
    folder.mkdir(exist_ok=True)
    seconds = {}
    started = time.perf_counter()
    ort_file = onnxruntime_default_int8(float_onnx, folder / "ort_default.int8.onnx", case.calibration)
    seconds["onnxruntime quantize_static"] = time.perf_counter() - started
    started = time.perf_counter()
    lowered = tflite_default_int8(float_onnx, folder / "tflite_default.int8.tflite", case.calibration)
    seconds["TFLite converter int8"] = time.perf_counter() - started
    tflite_file = folder / "tflite_default.int8.tflite"
    rows = [
        peer_row("onnx-int8 (peer)", "onnxruntime quantize_static defaults", ort_file, peer_session(ort_file),
                 case.evaluation, reference, options),
        peer_row("tflite-int8 (peer)", "TFLite converter default int8", tflite_file,
                 peer_session(tflite_file, lowered), case.evaluation, reference, options),
    ]  # fmt: skip
    return rows, seconds


# ---- measuring -------------------------------------------------------------------------------------------------


def only_output(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(outputs.values())).reshape(len(next(iter(outputs.values()))), -1)


def top1(outputs: dict[str, np.ndarray], evaluation: ArrayDataset) -> float | None:
    if evaluation.labels is None:
        return None
    return float(np.mean(only_output(outputs).argmax(1) == evaluation.labels))


def cosine(reference: np.ndarray, outputs: dict[str, np.ndarray]) -> float:
    values = only_output(outputs)
    dots = np.sum(reference * values, axis=1)
    return float(np.mean(dots / (np.linalg.norm(reference, axis=1) * np.linalg.norm(values, axis=1) + 1e-12)))


def cosine_to(reference: np.ndarray, session, evaluation: ArrayDataset) -> float:
    return cosine(reference, predict(session, evaluation, batch_size=1))


def float_reference(run_dir: Path, evaluation: ArrayDataset) -> np.ndarray:
    float_onnx = next((run_dir / "artifacts").glob("*.fp32.onnx"))
    return only_output(predict(open_session(float_onnx), evaluation, batch_size=1))


# ---- printing --------------------------------------------------------------------------------------------------


def fp32_p50(rows: list[Row], file_format: str) -> float:
    return next(r.p50_ms for r in rows if r.format == file_format and r.precision == "fp32")


def table_line(row: Row, rows: list[Row]) -> list[str]:
    accuracy = "n/a (random weights)" if row.accuracy is None else f"{row.accuracy:.2%}"
    ratio = row.p50_ms / fp32_p50(rows, row.format)
    return [row.artifact, row.tool, accuracy, f"{row.cosine:.4f}", f"{row.bytes:,}", f"{row.p50_ms:.4f}",
            f"{ratio:.2f}x"]  # fmt: skip


def print_table(rows: list[Row]) -> None:
    lines = [COLUMNS, *(table_line(row, rows) for row in rows)]
    widths = [max(len(text) for text in column) for column in zip(*lines, strict=True)]
    for line in lines:
        print("| " + " | ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) + " |")


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def accuracy_targets(rows: list[Row]) -> list[str]:
    lines = []
    for file_format in ("onnx", "tflite"):
        float_row = next(r for r in rows if r.format == file_format and r.precision == "fp32")
        peer = next(r for r in rows if r.format == file_format and r.tool != "edgepack")
        for row in (r for r in rows if r.format == file_format and r.tool == "edgepack" and r.precision == "int8"):
            drop = float_row.accuracy - row.accuracy
            lines.append(f"  {verdict(drop <= ACCURACY_MARGIN)}  {row.artifact}: {drop * 100:+.2f} pt below float "
                         f"(target <= 0.5)")  # fmt: skip
            lines.append(f"  {verdict(row.accuracy >= peer.accuracy)}  {row.artifact}: {row.accuracy:.2%} vs "
                         f"{peer.artifact} {peer.accuracy:.2%} (target: never below the peer's default)")  # fmt: skip
    return lines


def size_targets(rows: list[Row], parameters: int) -> list[str]:
    lines = []
    for file_format in ("onnx", "tflite"):
        float_bytes = next(r.bytes for r in rows if r.format == file_format and r.precision == "fp32")
        for row in (r for r in rows if r.format == file_format and r.precision == "int8"):
            ratio = float_bytes / row.bytes
            applies = parameters > LARGE_MODEL_PARAMETERS
            word = verdict(ratio >= SIZE_RATIO_TARGET) if applies else "n/a "
            lines.append(f"  {word}  {row.artifact}: fp32/int8 size {ratio:.2f}x (target >= {SIZE_RATIO_TARGET}x "
                         f"for > 1M parameters; this model has {parameters:,})")  # fmt: skip
    return lines


def latency_targets(rows: list[Row]) -> list[str]:
    lines = []
    for row in (r for r in rows if r.format == "tflite" and r.precision == "int8"):
        ratio = row.p50_ms / fp32_p50(rows, "tflite")
        lines.append(f"  {verdict(ratio <= TFLITE_LATENCY_RATIO_TARGET)}  {row.artifact}: p50 {ratio:.2f}x float "
                     f"(target <= {TFLITE_LATENCY_RATIO_TARGET}x)")  # fmt: skip
    return lines


def print_targets(rows: list[Row], case: Case) -> None:
    print("Targets:")
    lines = accuracy_targets(rows) if case.evaluation.labels is not None else []
    for line in lines + size_targets(rows, case.parameters) + latency_targets(rows):
        print(line)


# ---- main ------------------------------------------------------------------------------------------------------


def measure_case(case: Case, folder: Path, methods: list[str], bench_options: dict) -> None:
    run_dir = folder / case.recipe["name"]
    rows, notes, timings = [], [], {}
    for method in methods:
        results, timings[f"edgepack pack ({method})"] = run_edgepack(case, method, run_dir, bench_options)
        if method == methods[0]:
            reference = float_reference(run_dir, case.evaluation)
        rows += edgepack_rows(results, run_dir, method, case.evaluation, reference)
        notes += agreement_lines(results, method)
    peers, peer_seconds = peer_rows(run_dir, case, reference, BenchOptions(**bench_options))
    rows += peers
    timings |= peer_seconds
    rows.sort(key=lambda r: (r.format, r.precision != "fp32"))
    print(f"\n## {case.name}: {case.parameters:,} parameters, calibration {len(case.calibration)} samples, "
          f"evaluation {len(case.evaluation)} samples")  # fmt: skip
    print_table(rows)
    print("ONNX-int8 vs TFLite-int8 output agreement (edgepack, same calibration):")
    print("\n".join(notes))
    print_targets(rows, case)
    print("Wall seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in timings.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--methods", nargs="+", default=["minmax"],
                        choices=["minmax", "moving_average", "percentile", "mse", "entropy"],
                        help="edgepack calibration methods (the first one also gives the float rows)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=200, help="least timed runs per benchmark record")
    parser.add_argument("--keep", type=Path, help="write runs and peer files here instead of a temporary folder")
    args = parser.parse_args()
    bench_options = {"runs": args.runs, "warmup": 20, "min_seconds": 1.0, "threads": 1}
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            measure_case(CASES[model](folder), folder, args.methods, bench_options)


if __name__ == "__main__":
    main()
