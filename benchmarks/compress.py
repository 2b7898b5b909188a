"""Compression before quantization on digits: what pruning, low-rank, distillation and QAT cost and buy, measured in
the runtimes that run the exported files (issue 6, "Figures to report").

    .venv/bin/python benchmarks/compress.py [--models bundled wide] [--tables sparsity structured qat low_rank]
                                            [--scope global] [--quick] [--runs 200] [--keep DIR]

Two digits-trained models, each trained here on the 1437 train samples and evaluated on the 360 test samples:
- ``bundled``: edgepack's example CNN (conv 16, depthwise 16, pointwise 32, linear; 1.3k parameters, 30 epochs);
- ``wide``: the same shape with 4x the channels (64 / 64 / 128; 11k parameters, 30 epochs), where channel
  redundancy exists, so "structured pruning keeps the accuracy" is a meaningful claim.
Every figure comes from ``edgepack.pack`` on a recipe (results.json): top-1 of each artifact in its own runtime (torch,
onnxruntime, ai_edge_litert), file bytes, gzip bytes and per-layer zero fractions read back from the written file,
parameters and MACs from the structured-pruning report, host p50 latency (device_bench, 1 thread).

Tables: (1) unstructured accuracy vs sparsity, one-shot without fine-tune and gradual (Zhu & Gupta) with a
distillation fine-tune; (2) structured 50% of channels without fine-tune, with a labels-only fine-tune and with a
distillation fine-tune, with sizes and latency before/after; (3) QAT int8 vs PTQ int8 (asymmetric and symmetric
activations) on the float model and on the structured-pruned one; (4) low-rank factorisation with and without
fine-tune. The wide model's recipes name ``benchmarks.compress:wide_digits_cnn`` as their factory (this script puts
the repository root on sys.path). ``--quick`` is a smoke run: fewer settings and
epochs. Targets are printed with pass/fail; nothing is asserted (a shared machine's timings vary from run to run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.calibration.sources import digits_split  # noqa: E402
from edgepack.converters.sparsity import gzip_bytes, tflite_weight_sparsity  # noqa: E402

from edgepack.compression.distillation import finetune  # noqa: E402
from edgepack.compression.options import FinetuneConfig
from edgepack.core.dataset import ArrayDataset
from edgepack.examples import digits  # noqa: E402
from edgepack.recipe import parse_recipe  # noqa: E402
from edgepack.running.pipeline import pack  # noqa: E402

INPUT = "image"
STRUCTURED_AMOUNT = 0.5
STRUCTURED_MARGIN = 0.01  # within 1 point of float after fine-tune, in LiteRT
QAT_MATCH_MARGIN = 0.005  # exported int8 within 0.5 point of the QAT model's simulated accuracy
DISTILLATION = {"alpha": 0.7, "temperature": 4.0}
TABLES = ["sparsity", "structured", "qat", "low_rank"]


@dataclass
class Settings:
    """What --quick changes: the sweep and the epochs of every training."""

    sparsities: list[float]
    train_epochs: int = 30
    prune_epochs: int = 20  # gradual unstructured pruning: sparsity ramps up, then the model recovers
    structured_epochs: int = 30
    qat_epochs: int = 5
    low_rank_epochs: int = 10
    learning_rate: float = 3e-3  # edgepack's default; QAT uses a smaller one


FULL = Settings(sparsities=[0.3, 0.5, 0.7, 0.9])
QUICK = Settings(sparsities=[0.5, 0.9], train_epochs=15, prune_epochs=3, structured_epochs=3, qat_epochs=1,
                 low_rank_epochs=2)  # fmt: skip


# ---- the models ------------------------------------------------------------------------------------------------


def wide_digits_cnn() -> nn.Module:
    """The bundled CNN's shape with 4x the channels: conv 64, depthwise 64, pointwise 128, linear."""
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU6(),
        nn.Conv2d(64, 128, 1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


@dataclass
class Model:
    key: str
    title: str
    factory: str
    weights: Path
    parameters: int


def bundled_model(folder: Path, settings: Settings) -> Model:
    weights = folder / "digits_cnn.pt"
    digits.train(weights, epochs=settings.train_epochs)
    parameters = sum(p.numel() for p in digits.build_model().parameters())
    return Model("bundled", "bundled digits CNN", "edgepack.examples.digits:build_model", weights, parameters)


def wide_model(folder: Path, settings: Settings) -> Model:
    """Trained with edgepack's own fine-tune loop, labels only, from a seeded random start."""
    weights = folder / "wide_digits_cnn.pt"
    torch.manual_seed(0)
    module = wide_digits_cnn()
    images, labels = digits_split("train")
    train = ArrayDataset({INPUT: images}, labels)
    finetune(module, train, FinetuneConfig(epochs=settings.train_epochs, alpha=0), input_names=[INPUT])
    torch.save(module.state_dict(), weights)
    parameters = sum(p.numel() for p in module.parameters())
    return Model("wide", "wide digits CNN (4x channels)", "benchmarks.compress:wide_digits_cnn", weights, parameters)


MODELS = {"bundled": bundled_model, "wide": wide_model}


# ---- running edgepack ------------------------------------------------------------------------------------------


class Runs:
    """One pack per setting, each in its own folder under the model's; results are kept by setting name."""

    def __init__(self, model: Model, folder: Path, bench_options: dict):
        self.model, self.folder, self.bench_options = model, folder / model.key, bench_options
        self.results: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}

    def recipe(self, name: str, stages: list[dict], bench: bool) -> dict:
        return {
            "name": name,
            "model": {"factory": self.model.factory, "weights": str(self.model.weights),
                      "inputs": [{"name": INPUT, "shape": [1, 1, 8, 8]}], "output_names": ["logits"]},
            "data": {"source": "digits"},
            "stages": stages,
            "bench": self.bench_options if bench else None,
            "robustness": None,
        }  # fmt: skip

    def pack(self, name: str, stages: list[dict], *, bench: bool = False) -> dict:
        if name not in self.results:
            started = time.perf_counter()
            recipe = parse_recipe(self.recipe(name, stages, bench))
            self.results[name] = pack(recipe, out=self.folder / name, quiet=True).results
            self.seconds[name] = time.perf_counter() - started
        return self.results[name]

    def baseline(self) -> dict:
        """The float model exported, converted and post-training quantized (default scheme), benchmarked."""
        return self.pack("float", [{"stage": "export"}, {"stage": "convert"}, {"stage": "quantize"}], bench=True)

    def path(self, name: str, record: dict) -> Path:
        return self.folder / name / record["path"]


def artifact(results: dict, name: str) -> dict:
    return next(a for a in results["artifacts"] if a["name"] == name)


def top1(record: dict) -> float:
    return record["accuracy"]["top1"]


def p50(record: dict) -> float:
    return record["bench"][0]["latency_ms"]["p50"]


def zero_fraction(sparsity: list[dict]) -> tuple[float, float, float]:
    """All weights' zero fraction (element-weighted mean over layers), and the lowest and highest layer's."""
    fractions = [layer["fraction"] for layer in sparsity]
    elements = [layer["elements"] for layer in sparsity]
    return float(np.average(fractions, weights=elements)), min(fractions), max(fractions)


def finetune_config(settings: Settings, epochs: int, *, distill: bool) -> dict:
    return {"epochs": epochs, "learning_rate": settings.learning_rate} | (DISTILLATION if distill else {"alpha": 0})


# ---- printing --------------------------------------------------------------------------------------------------


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(text) for text in column) for column in zip(columns, *rows, strict=True)]
    print("| " + " | ".join(text.ljust(width) for text, width in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print("| " + " | ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)) + " |")


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def percent(value: float) -> str:
    return f"{value:.2%}"


def points(value: float, reference: float) -> str:
    return f"{(value - reference) * 100:+.2f}"


# ---- 1. unstructured: accuracy vs sparsity ---------------------------------------------------------------------

SPARSITY_COLUMNS = ["schedule", "sparsity", "top-1 torch", "top-1 TFLite fp32 (LiteRT)", "pt vs float",
                    "TFLite bytes", "TFLite gzip bytes", "zeros in TFLite weights (layer min-max)"]  # fmt: skip


def unstructured_stages(amount: float, scope: str, tune: dict | None) -> list[dict]:
    prune = {"stage": "prune", "method": "unstructured", "amount": amount, "scope": scope}
    if tune is not None:
        prune |= {"schedule": "gradual", "finetune": tune}
    return [prune, {"stage": "export"}, {"stage": "convert"}]


def sparsity_row(schedule: str, amount: float, results: dict, float_top1: float) -> list[str]:
    tflite = artifact(results, "tflite-fp32")
    mean, low, high = zero_fraction(tflite["sparsity"])
    return [schedule, f"{amount:.0%}", percent(top1(artifact(results, "torch-pruned"))), percent(top1(tflite)),
            points(top1(tflite), float_top1), f"{tflite['bytes']:,}", f"{tflite['gzip_bytes']:,}",
            f"{mean:.1%} ({low:.0%}-{high:.0%})"]  # fmt: skip


def float_sparsity_row(runs: Runs) -> list[str]:
    """The unpruned model's TFLite file, measured with the same readers the pipeline uses on pruned ones."""
    results = runs.baseline()
    tflite = artifact(results, "tflite-fp32")
    path = runs.path("float", tflite)
    mean, low, high = zero_fraction(tflite_weight_sparsity(path))
    return ["float", "0%", percent(top1(artifact(results, "torch-fp32"))), percent(top1(tflite)), "+0.00",
            f"{tflite['bytes']:,}", f"{gzip_bytes(path):,}", f"{mean:.1%} ({low:.0%}-{high:.0%})"]  # fmt: skip


def sparsity_table(runs: Runs, settings: Settings, scope: str) -> None:
    float_top1 = top1(artifact(runs.baseline(), "tflite-fp32"))
    rows = [float_sparsity_row(runs)]
    gradual = finetune_config(settings, settings.prune_epochs, distill=True)
    for schedule, tune in (("one-shot, no fine-tune", None), ("gradual + distillation", gradual)):
        for amount in settings.sparsities:
            name = f"unstructured_{'gradual' if tune else 'one_shot'}_{round(amount * 100)}"
            results = runs.pack(name, unstructured_stages(amount, scope, tune))
            rows.append(sparsity_row(schedule, amount, results, float_top1))
    print(f"\n### Unstructured magnitude pruning ({scope} scope): accuracy vs sparsity")
    print(f"Gradual: cubic ramp over the first 75% of {settings.prune_epochs} fine-tune epochs, distilling from "
          f"the float model (alpha {DISTILLATION['alpha']}, T {DISTILLATION['temperature']}, "
          f"lr {settings.learning_rate}).")  # fmt: skip
    print_table(SPARSITY_COLUMNS, rows)
    print("A sparse dense tensor only shrinks when compressed: raw bytes stay, gzip bytes fall with sparsity.")


# ---- 2. structured: 50% of channels ----------------------------------------------------------------------------

STRUCTURED_COLUMNS = ["model", "params", "MACs", "ONNX bytes", "TFLite bytes", "p50 ONNX ms", "p50 TFLite ms",
                      "top-1 TFLite fp32 (LiteRT)", "pt vs float"]  # fmt: skip


def structured_stages(tune: dict | None) -> list[dict]:
    prune = {"stage": "prune", "method": "structured", "amount": STRUCTURED_AMOUNT, "importance": "l1"}
    if tune is not None:
        prune["finetune"] = tune
    return [prune, {"stage": "export"}, {"stage": "convert"}]


def structured_variants(settings: Settings) -> dict[str, dict | None]:
    epochs = settings.structured_epochs
    return {
        "no fine-tune": None,
        f"labels-only fine-tune ({epochs} ep)": finetune_config(settings, epochs, distill=False),
        f"distillation fine-tune ({epochs} ep)": finetune_config(settings, epochs, distill=True),
    }


def structured_row(label: str, params: int, macs: int, results: dict, float_top1: float) -> list[str]:
    onnx, tflite = artifact(results, "onnx-fp32"), artifact(results, "tflite-fp32")
    return [label, f"{params:,}", f"{macs:,}", f"{onnx['bytes']:,}", f"{tflite['bytes']:,}", f"{p50(onnx):.4f}",
            f"{p50(tflite):.4f}", percent(top1(tflite)), points(top1(tflite), float_top1)]  # fmt: skip


def structured_table(runs: Runs, settings: Settings) -> None:
    baseline = runs.baseline()
    float_top1 = top1(artifact(baseline, "tflite-fp32"))
    variants = structured_variants(settings)
    pruned = {label: runs.pack(f"structured_{index}", structured_stages(tune), bench=True)
              for index, (label, tune) in enumerate(variants.items())}  # fmt: skip
    channels = [artifact(r, "torch-pruned")["details"]["pruning"]["channels"] for r in pruned.values()]
    rows = [structured_row("float", channels[0]["params_before"], channels[0]["macs_before"], baseline, float_top1)]
    for (label, results), report in zip(pruned.items(), channels, strict=True):
        rows.append(structured_row(f"50% channels, {label}", report["params_after"], report["macs_after"], results,
                                   float_top1))  # fmt: skip
    print(f"\n### Structured pruning, {STRUCTURED_AMOUNT:.0%} of the channels of every layer (L1 importance)")
    print("Channels kept: " + ", ".join(f"layer {k}: {a} -> {b}" for k, (a, b) in channels[0]["channels"].items()))
    print(f"Fine-tunes: lr {settings.learning_rate}; distillation alpha {DISTILLATION['alpha']}, "
          f"T {DISTILLATION['temperature']}; labels-only alpha 0.")  # fmt: skip
    print_table(STRUCTURED_COLUMNS, rows)
    print_structured_targets(baseline, pruned, [label for label, tune in variants.items() if tune], float_top1)


def print_structured_targets(baseline: dict, pruned: dict[str, dict], tuned: list[str], float_top1: float) -> None:
    """The accuracy target applies after fine-tune; size and speed compare the first pruned run with the float one."""
    print("Targets:")
    for label in tuned:
        drop = float_top1 - top1(artifact(pruned[label], "tflite-fp32"))
        print(f"  {verdict(drop <= STRUCTURED_MARGIN)}  {label}: {drop * 100:.2f} pt below float in LiteRT "
              f"(target <= {STRUCTURED_MARGIN * 100:.0f})")  # fmt: skip
    results = next(iter(pruned.values()))
    for name in ("onnx-fp32", "tflite-fp32"):
        before, after = artifact(baseline, name), artifact(results, name)
        size, speed = after["bytes"] / before["bytes"], p50(after) / p50(before)
        print(f"  {verdict(size < 1)}  {name}: bytes after/before {size:.2f}x (target < 1: the file really shrinks)")
        print(f"  {verdict(speed < 1)}  {name}: p50 after/before {speed:.2f}x (target < 1: faster; a shared "
              f"machine's timings are noisy at these sizes)")  # fmt: skip


# ---- 3. QAT int8 vs PTQ int8 -----------------------------------------------------------------------------------

QAT_COLUMNS = ["source model", "activations", "method", "top-1 source (torch fp32)", "QAT simulated (torch)",
               "top-1 ONNX int8", "top-1 TFLite int8", "ONNX pt vs source", "TFLite pt vs source"]  # fmt: skip
QAT_LEARNING_RATE = 5e-4


def ptq_stages(symmetric: bool) -> list[dict]:
    return [{"stage": "export"}, {"stage": "quantize", "symmetric_activations": symmetric}]


def qat_stages(symmetric: bool, settings: Settings) -> list[dict]:
    tune = {"epochs": settings.qat_epochs, "learning_rate": QAT_LEARNING_RATE} | DISTILLATION
    return [{"stage": "qat", "symmetric_activations": symmetric, "finetune": tune}, *ptq_stages(symmetric)]


def qat_sources(settings: Settings) -> dict[str, list[dict]]:
    """Quantize the float model, and the structured-pruned one (a smaller model has less slack for int8)."""
    tune = finetune_config(settings, settings.structured_epochs, distill=True)
    return {"float": [], "50% channels + distillation": structured_stages(tune)[:1]}


def source_top1(results: dict) -> float:
    """The fp32 accuracy of the torch model the int8 files come from (the latest torch artifact before qat)."""
    torch_records = [a for a in results["artifacts"] if a["format"] == "torch" and a["name"] != "torch-qat"]
    return top1(torch_records[-1])


def simulated_top1(results: dict) -> float | None:
    qat = next((a for a in results["artifacts"] if a["name"] == "torch-qat"), None)
    return qat["details"]["qat"]["simulated_accuracy"]["top1"] if qat else None


def qat_row(source: str, scheme: str, method: str, results: dict) -> list[str]:
    reference, simulated = source_top1(results), simulated_top1(results)
    onnx, tflite = top1(artifact(results, "onnx-int8")), top1(artifact(results, "tflite-int8"))
    return [source, scheme, method, percent(reference), "-" if simulated is None else percent(simulated),
            percent(onnx), percent(tflite), points(onnx, reference), points(tflite, reference)]  # fmt: skip


def qat_table(runs: Runs, settings: Settings) -> None:
    rows, qat_runs = [], []
    for index, (source, compress) in enumerate(qat_sources(settings).items()):
        for symmetric in (False, True):
            scheme = "symmetric" if symmetric else "asymmetric"
            ptq = runs.pack(f"ptq_{index}_{scheme}", compress + ptq_stages(symmetric))
            qat = runs.pack(f"qat_{index}_{scheme}", compress + qat_stages(symmetric, settings))
            rows += [qat_row(source, scheme, "PTQ (minmax)", ptq), qat_row(source, scheme, "QAT", qat)]
            qat_runs.append((f"{source}, {scheme}", qat))
    print("\n### int8: QAT (fake-quant fine-tune, then export + quantize with its trained ranges) vs PTQ")
    print(f"Per-channel int8 weights, int8 activations; QAT: {settings.qat_epochs} epochs, lr {QAT_LEARNING_RATE}, "
          f"distilling from the unpruned float model (alpha {DISTILLATION['alpha']}, "
          f"T {DISTILLATION['temperature']}).")  # fmt: skip
    print_table(QAT_COLUMNS, rows)
    print("QAT is also more training: where its int8 files beat the source's float, that is the extra epochs, not "
          "quantization.")  # fmt: skip
    print("Targets:")
    for label, results in qat_runs:
        for name in ("onnx-int8", "tflite-int8"):
            gap = abs(top1(artifact(results, name)) - simulated_top1(results))
            print(f"  {verdict(gap <= QAT_MATCH_MARGIN)}  QAT ({label}) {name}: {gap * 100:.2f} pt from the simulated "
                  f"accuracy (target <= {QAT_MATCH_MARGIN * 100:.1f})")  # fmt: skip


# ---- 4. low-rank -----------------------------------------------------------------------------------------------

LOW_RANK_COLUMNS = ["budget", "fine-tune", "layers factorised", "params", "top-1 torch", "top-1 TFLite fp32 (LiteRT)",
                    "pt vs float", "TFLite bytes"]  # fmt: skip


def low_rank_stages(budget: dict, tune: dict | None) -> list[dict]:
    return [{"stage": "low_rank", **budget, "finetune": tune}, {"stage": "export"}, {"stage": "convert"}]


def low_rank_row(budget: str, tuned: str, results: dict, float_top1: float) -> list[str]:
    torch_record, tflite = artifact(results, "torch-low-rank"), artifact(results, "tflite-fp32")
    layers = [layer for layer in torch_record["details"]["low_rank"]["layers"] if layer["skipped"] is None]
    names = ", ".join(f"{layer['name']} (r {layer['rank']})" for layer in layers) or "none"
    return [budget, tuned, names, f"{torch_record['details']['parameters']:,}", percent(top1(torch_record)),
            percent(top1(tflite)), points(top1(tflite), float_top1), f"{tflite['bytes']:,}"]  # fmt: skip


def low_rank_table(runs: Runs, settings: Settings, model: Model) -> None:
    baseline = runs.baseline()
    float_top1 = top1(artifact(baseline, "tflite-fp32"))
    rows = [["float", "-", "-", f"{model.parameters:,}", percent(top1(artifact(baseline, "torch-fp32"))),
             percent(float_top1), "+0.00", f"{artifact(baseline, 'tflite-fp32')['bytes']:,}"]]  # fmt: skip
    tune = finetune_config(settings, settings.low_rank_epochs, distill=True)
    for label, budget in (("energy 0.9", {"energy": 0.9}), ("rank 4", {"rank": 4})):
        for tuned, config in (("none", None), (f"distillation ({settings.low_rank_epochs} ep)", tune)):
            name = f"low_rank_{'_'.join(map(str, budget.values()))}_{'ft' if config else 'raw'}"
            rows.append(low_rank_row(label, tuned, runs.pack(name, low_rank_stages(budget, config)), float_top1))
    print("\n### Low-rank factorisation (truncated SVD; conv: k x k to rank r, then 1 x 1), where it saves parameters")
    print_table(LOW_RANK_COLUMNS, rows)


# ---- main ------------------------------------------------------------------------------------------------------


def measure_model(key: str, folder: Path, settings: Settings, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    model = MODELS[key](folder, settings)
    train_seconds = time.perf_counter() - started
    runs = Runs(model, folder, {"runs": args.runs, "warmup": 10, "min_seconds": 0.5, "threads": 1})
    float_top1 = top1(artifact(runs.baseline(), "tflite-fp32"))
    print(f"\n## {model.title}: {model.parameters:,} parameters, trained {settings.train_epochs} epochs "
          f"({train_seconds:.0f} s); float top-1 in LiteRT {float_top1:.2%} on 360 test digits")  # fmt: skip
    if "sparsity" in args.tables:
        sparsity_table(runs, settings, args.scope)
    if "structured" in args.tables:
        structured_table(runs, settings)
    if "qat" in args.tables:
        qat_table(runs, settings)
    if "low_rank" in args.tables:
        low_rank_table(runs, settings, model)
    print(f"\nWall seconds for {model.key}: training {train_seconds:.0f}, packs {sum(runs.seconds.values()):.0f} "
          f"({len(runs.seconds)} runs)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["bundled", "wide"])
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=TABLES)
    parser.add_argument("--scope", choices=["layer", "global"], default="global",
                        help="unstructured: the amount in every layer, or one threshold over all layers")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: two sparsities, a few epochs")
    parser.add_argument("--runs", type=int, default=200, help="least timed runs per benchmark record")
    parser.add_argument("--keep", type=Path, help="write the runs here instead of a temporary folder")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models train faster on one thread
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        for key in args.models:
            measure_model(key, folder, settings, args)
    print(f"\nTotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
