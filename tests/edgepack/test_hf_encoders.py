"""Hugging Face encoders (BertModel built from a config, eager and SDPA attention, legacy and dynamo exporters) to
float and int8 TFLite, each verified against the ONNX source. The legacy exporter's SDPA graph computes its scale
from Shape -> Slice -> Sqrt, and a HF export with dynamic batch and sequence computes every reshape from Shape:
folded with the static input shapes before lowering."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.convert_file import convert_file
from tests.edgepack.foreign_models import bert_feeds, export_bert

SHAPES = ["input_ids=1x16", "attention_mask=1x16"]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert_calib") / "calib.npz"
    np.savez(path, **bert_feeds(16, seed=1))
    return path


def float_and_int8_tflite(onnx_path, calibration) -> tuple[dict, dict]:
    out = onnx_path.parent
    fp32 = convert_file(onnx_path, to="tflite", out=out / "fp32.tflite", input_shapes=SHAPES)
    int8 = convert_file(onnx_path, to="tflite", out=out / "int8.tflite", input_shapes=SHAPES, precision="int8",
                        calib=calibration)  # fmt: skip
    return fp32, int8


def assert_verified(fp32: dict, int8: dict) -> None:
    assert fp32["precision"] == "fp32" and fp32["max_abs_error"] <= fp32["tolerance"], fp32
    assert int8["precision"] == "int8" and int8["cosine_similarity"] >= int8["min_cosine"], int8


def test_legacy_sdpa_export_converts_to_float_and_int8_tflite(tmp_path, calibration):
    fp32, int8 = float_and_int8_tflite(export_bert("sdpa", "legacy", tmp_path / "bert.onnx"), calibration)
    assert_verified(fp32, int8)


def test_dynamic_sequence_hf_export_converts_with_the_given_shapes(tmp_path, calibration):
    onnx_path = export_bert("eager", "legacy", tmp_path / "bert.onnx", dynamic=True)
    fp32, int8 = float_and_int8_tflite(onnx_path, calibration)
    assert_verified(fp32, int8)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_dynamo_hf_style_exports_convert_to_float_and_int8_tflite(tmp_path, calibration, attention):
    # Dynamic batch and sequence, as HF exports leave them: every reshape is computed from Shape until folded. (The
    # legacy exporter's cases are the two tests above; benchmarks/foreign_coverage.py runs all eight variants.)
    onnx_path = export_bert(attention, "dynamo", tmp_path / "bert.onnx", dynamic=True)
    fp32, int8 = float_and_int8_tflite(onnx_path, calibration)
    assert_verified(fp32, int8)
