"""Coverage of models from the wild (issue 15): which of float and int8, ONNX and TFLite each foreign case reaches,
verified as `edgepack convert` verifies (float: max abs error within tolerance; int8: cosine to the source >= 0.99),
and which ONNX op types the BERT-style exports ask the TFLite lowering for.

    .venv/bin/python benchmarks/foreign_coverage.py

Cases, all built in code (tests/edgepack/foreign_models.py): a voice-activity detector with a [2, batch, 128] state
and a scalar int64 sample rate; a tiny Hugging Face BertModel (hidden 32, 2 layers, 2 heads, vocab 100, from a
config) with eager and sdpa attention, exported by edgepack's export stage (static [1, 16]) and as a HF export
(dynamic batch and sequence) by the legacy and the dynamo exporter. Each cell: 'ok' with the figure, or the error.
The float ONNX file is the source itself (its check: onnxruntime runs it on the calibration samples).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.converters.onnx_to_tf.prepare import prepare_model  # noqa: E402
from edgepack.converters.runtime import OnnxSession  # noqa: E402

from edgepack.convert_file import convert_file  # noqa: E402
from edgepack.core.dataset import in_model_shape  # noqa: E402
from tests.edgepack.foreign_models import SAMPLE_RATE, bert_feeds, export_bert, export_vad, vad_feeds  # noqa: E402

BERT_SHAPES = ["input_ids=1x16", "attention_mask=1x16"]


def cell(action) -> str:
    try:
        result = action()
    except Exception as e:  # noqa: BLE001  a coverage table reports every failure and goes on
        return f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:60]}"
    if result["tolerance"] is not None:
        return f"ok err {result['max_abs_error']:.1e}"
    return f"ok cos {result['cosine_similarity']:.4f}"


def source_runs(onnx_path: Path, calibration: Path) -> str:
    try:
        session = OnnxSession(onnx_path)
        feeds = dict(np.load(calibration))
        session.run({spec.name: in_model_shape(feeds[spec.name][:1], spec.shape) for spec in session.inputs})
    except Exception as e:  # noqa: BLE001
        return f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:60]}"
    return "ok (source)"


def coverage_row(onnx_path: Path, calibration: Path, shapes: list[str], values: dict) -> list[str]:
    out = onnx_path.parent
    quantized = {"precision": "int8", "calib": calibration, "input_shapes": shapes}
    return [
        source_runs(onnx_path, calibration),
        cell(
            lambda: convert_file(onnx_path, to="tflite", out=out / "f.tflite", input_shapes=shapes, input_values=values)
        ),
        cell(lambda: convert_file(onnx_path, to="onnx", out=out / "q.onnx", **quantized)),
        cell(lambda: convert_file(onnx_path, to="tflite", out=out / "q.tflite", **quantized)),
    ]


def lowered_op_types(onnx_path: Path, shapes: dict[str, list[int]]) -> str:
    """The op types left for the lowering once shapes are folded (what the TFLite route needs)."""
    prepared = prepare_model(onnx_path, shapes)
    return ", ".join(f"{op} {n}" for op, n in sorted(Counter(n.op_type for n in prepared.graph.node).items()))


def main() -> None:
    warnings.simplefilter("ignore")
    rows, ops = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vad"
        folder.mkdir()
        np.save(folder / "sr.npy", np.array(SAMPLE_RATE, np.int64))
        np.savez(folder / "calib.npz", **vad_feeds(16, seed=1))
        vad = export_vad(folder / "vad.onnx")
        values = {"sr": folder / "sr.npy"}
        rows.append(["VAD (state batch axis 1, scalar sr)",
                     *coverage_row(vad, folder / "calib.npz", ["state=2x1x128@1"], values)])  # fmt: skip
        for attention in ("eager", "sdpa"):
            for exporter in ("legacy", "dynamo"):
                for dynamic in (False, True):
                    folder = Path(tmp) / f"{attention}_{exporter}_{dynamic}"
                    folder.mkdir()
                    np.savez(folder / "calib.npz", **bert_feeds(16, seed=1))
                    path = export_bert(attention, exporter, folder / "bert.onnx", dynamic)
                    name = f"BERT {attention} {exporter} {'dynamic' if dynamic else 'static'}"
                    rows.append([name, *coverage_row(path, folder / "calib.npz", BERT_SHAPES, {})])
                    exported = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
                    ops.append((name, ", ".join(sorted(exported)),
                                lowered_op_types(path, {"input_ids": [1, 16], "attention_mask": [1, 16]})))  # fmt: skip
    header = ["case", "float ONNX", "float TFLite", "int8 ONNX", "int8 TFLite"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print("\nONNX op types in each BERT export, and those left to lower once shapes are folded:")
    for name, exported, lowered in ops:
        print(f"{name}\n  exported: {exported}\n  lowered:  {lowered}")


if __name__ == "__main__":
    main()
