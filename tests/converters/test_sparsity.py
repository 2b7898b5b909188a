"""Sparsity read back from written files: a 50%-pruned digits CNN exported to ONNX (float, QDQ int8) and TFLite
(float, int8) shows per layer the zero fraction torch held; only the gzip-compressed size shrinks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.sources import load_digits_dataset
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
from edgepack.converters.qdq import write_qdq_model
from edgepack.converters.sparsity import gzip_bytes, onnx_weight_sparsity, tflite_weight_sparsity
from edgepack.converters.torch_to_onnx import export_to_onnx

from edgepack.compression.pruning import magnitude_prune
from tests.edgepack.pruning_helpers import conv_net_with, quick_conv_net_weights

SHAPE = [1, 1, 8, 8]


def export_both(model: torch.nn.Module, folder, stem: str) -> tuple:
    onnx_path, tflite_path = folder / f"{stem}.onnx", folder / f"{stem}.tflite"
    export_to_onnx(model.eval(), (torch.zeros(SHAPE),), onnx_path, input_names=["image"], output_names=["logits"],
                   opset=18, dynamo=True)  # fmt: skip
    convert_onnx_to_tflite(onnx_path, tflite_path, input_shapes={"image": SHAPE})
    return onnx_path, tflite_path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Dense and 50%-pruned conv_net files, and the zero fractions torch measured (conv, conv, linear)."""
    folder = tmp_path_factory.mktemp("sparsity")
    weights = quick_conv_net_weights(folder, epochs=3)
    dense, pruned = conv_net_with(weights), conv_net_with(weights)
    fractions = magnitude_prune(pruned, sparsity=0.5)
    return {"dense": export_both(dense, folder, "dense"), "pruned": export_both(pruned, folder, "pruned"),
            "fractions": fractions, "folder": folder}  # fmt: skip


def int8_files(onnx_path, folder) -> tuple:
    """The QDQ ONNX file and the int8 TFLite file, from the same digits calibration."""
    calibration = calibrate(onnx.load(str(onnx_path)), load_digits_dataset("image", "train"), QuantScheme())
    qdq_path, tflite_path = folder / "pruned.int8.onnx", folder / "pruned.int8.tflite"
    write_qdq_model(onnx.load(str(onnx_path)), qdq_path, calibration.plan, calibration.activations)
    ranges = calibration.fake_quant_ranges()
    convert_onnx_to_tflite(onnx_path, tflite_path, {"image": SHAPE}, FakeQuantization(ranges, 8))
    return qdq_path, tflite_path


def test_float_files_hold_the_torch_zero_fractions(files):
    onnx_path, tflite_path = files["pruned"]
    expected = list(files["fractions"].values())
    assert expected == [0.5, 0.5, 0.5]  # 72, 1152 and 160 weights: 50% is exact
    for rows in (onnx_weight_sparsity(onnx_path), tflite_weight_sparsity(tflite_path)):
        assert [row["elements"] for row in rows] == [72, 1152, 160]
        assert [row["fraction"] for row in rows] == expected
    assert all(row["fraction"] == 0 for row in onnx_weight_sparsity(files["dense"][0]))
    assert all(row["fraction"] == 0 for row in tflite_weight_sparsity(files["dense"][1]))


def test_layers_are_named_by_node_and_op_output(files):
    onnx_names = {node.name for node in onnx.load(str(files["pruned"][0])).graph.node}
    rows = onnx_weight_sparsity(files["pruned"][0])
    assert all(row["layer"] in onnx_names for row in rows)
    assert len({row["layer"] for row in tflite_weight_sparsity(files["pruned"][1])}) == 3


def test_int8_files_keep_the_pruned_zeros(files):
    qdq_path, tflite_path = int8_files(files["pruned"][0], files["folder"])
    for rows in (onnx_weight_sparsity(qdq_path), tflite_weight_sparsity(tflite_path)):
        fractions = np.array([row["fraction"] for row in rows])
        assert [row["elements"] for row in rows] == [72, 1152, 160]
        # Every pruned zero stays zero; int8 rounding may add a few more (|w| < scale / 2).
        assert np.all(fractions >= 0.5) and np.all(fractions < 0.56), fractions


def test_only_the_compressed_size_shrinks(files):
    for dense, pruned in zip(files["dense"], files["pruned"], strict=True):
        raw_dense, raw_pruned = dense.stat().st_size, pruned.stat().st_size
        assert abs(raw_pruned - raw_dense) / raw_dense < 0.02, (raw_dense, raw_pruned)
        assert gzip_bytes(pruned) < 0.85 * gzip_bytes(dense), (gzip_bytes(pruned), gzip_bytes(dense))
