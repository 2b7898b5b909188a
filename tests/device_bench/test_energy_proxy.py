"""The analytic energy proxy against totals worked out by hand from Horowitz's constants.

The conv + relu model: x 3x8x8, 4 filters 3x3, same padding -> 4x8x8. MACs = 4*8*8 outputs x 3*3*3 = 6912.
Float: weights 108 x 4 B, input 192 x 4 B, output 256 x 4 B. Int8: 1 B each (TFLite adds a 4-element int32 bias,
as does its float converter a float one). A MAC costs mult + add: fp32 3.7 + 0.9 = 4.6 pJ, int8 0.2 + 0.03 =
0.23 pJ. Weights come from DRAM (1300 pJ per 64 bits), activations through SRAM (20 pJ per 64 bits).
"""

from __future__ import annotations

import pytest
from edgepack.device_bench import energy_proxy
from edgepack.device_bench.energy_proxy import ENERGY_PJ, SOURCE

from tests.device_bench import tiny_models

MACS = 4 * 8 * 8 * 3 * 3 * 3
FP32_MAC_PJ, INT8_MAC_PJ = 3.7 + 0.9, 0.2 + 0.03
DRAM_PJ_PER_BYTE, SRAM_PJ_PER_BYTE = 1300 / 8, 20 / 8


def hand_total_uj(mac_pj: float, weight_bytes: int, activation_bytes: int) -> float:
    picojoules = MACS * mac_pj + weight_bytes * DRAM_PJ_PER_BYTE + activation_bytes * SRAM_PJ_PER_BYTE
    return picojoules * 1e-6


@pytest.fixture(scope="module")
def conv_models(tmp_path_factory, onnx_model, tflite_model):
    folder = tmp_path_factory.mktemp("energy")
    qdq = tiny_models.write_conv_relu_qdq(folder / "conv_relu.qdq.onnx", onnx_model)
    int8_tflite = tiny_models.write_conv_relu_tflite_int8(folder / "conv_relu.int8.tflite")
    return {"onnx fp32": onnx_model, "onnx int8": qdq, "tflite fp32": tflite_model, "tflite int8": int8_tflite}


# (model, precision, weight bytes, activation bytes), each worked out in the module docstring.
CASES = [
    ("onnx fp32", "fp32", 108 * 4, (192 + 256) * 4),
    ("onnx int8", "int8", 108, 192 + 256),
    ("tflite fp32", "fp32", 108 * 4 + 4 * 4, (192 + 256) * 4),
    ("tflite int8", "int8", 108 + 4 * 4, 192 + 256),
]


@pytest.mark.parametrize(("model", "precision", "weight_bytes", "activation_bytes"), CASES)
def test_conv_totals_match_the_hand_computed_ones(conv_models, model, precision, weight_bytes, activation_bytes):
    proxy = energy_proxy(conv_models[model])
    (layer,) = proxy["layers"]
    assert (layer["precision"], layer["macs"]) == (precision, MACS)
    assert (layer["weight_bytes"], layer["activation_bytes"]) == (weight_bytes, activation_bytes)
    mac_pj = INT8_MAC_PJ if precision == "int8" else FP32_MAC_PJ
    assert proxy["uj_per_inference"] == pytest.approx(hand_total_uj(mac_pj, weight_bytes, activation_bytes))
    assert proxy["constants_pj"] == ENERGY_PJ and proxy["source"] == SOURCE and "Horowitz" in SOURCE


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_int8_comes_out_lower_by_the_ratio_the_constants_imply(conv_models, runtime):
    fp32, int8 = (energy_proxy(conv_models[f"{runtime} {precision}"]) for precision in ("fp32", "int8"))
    assert int8["compute_uj"] / fp32["compute_uj"] == pytest.approx(INT8_MAC_PJ / FP32_MAC_PJ)  # 0.05
    (_, _, fp32_weights, fp32_activations), (_, _, int8_weights, int8_activations) = (
        case for case in CASES if case[0].startswith(runtime)
    )
    implied = hand_total_uj(INT8_MAC_PJ, int8_weights, int8_activations) / hand_total_uj(
        FP32_MAC_PJ, fp32_weights, fp32_activations
    )
    assert int8["uj_per_inference"] / fp32["uj_per_inference"] == pytest.approx(implied)
    assert implied < 0.25  # a quarter of the bytes and a twentieth of the arithmetic


def test_grouped_conv_gemm_and_matmul_are_counted(tmp_path):
    proxy = energy_proxy(tiny_models.write_grouped_conv_gemm_matmul_onnx(tmp_path / "layers.onnx"))
    layers = [
        (layer["op"], layer["macs"], layer["weight_bytes"], layer["activation_bytes"]) for layer in proxy["layers"]
    ]
    assert layers == [
        ("Conv", 6 * 6 * 6 * (2 * 3 * 3), 6 * 2 * 3 * 3 * 4, (4 * 36 + 6 * 36) * 4),  # 2 input channels per group
        ("Gemm", 10 * 216, (10 * 216 + 10) * 4, (216 + 10) * 4),
        ("MatMul", 5 * 10, 10 * 5 * 4, (10 + 5) * 4),
    ]
    assert proxy["ops_not_counted"] == {"Relu": 1, "Flatten": 1} and proxy["macs"] == {"fp32": 3888 + 2160 + 50}


def test_depthwise_and_fully_connected_are_counted(tmp_path):
    proxy = energy_proxy(tiny_models.write_depthwise_dense_tflite(tmp_path / "layers.tflite"))
    layers = [
        (layer["op"], layer["macs"], layer["weight_bytes"], layer["activation_bytes"]) for layer in proxy["layers"]
    ]
    assert layers == [
        ("DEPTHWISE_CONV_2D", 6 * 6 * 4 * 3 * 3, (3 * 3 * 4 + 4) * 4, 144 * 4 * 2),  # one input channel per output
        ("FULLY_CONNECTED", 5 * 144, 144 * 5 * 4, (144 + 5) * 4),
    ]
    assert proxy["ops_not_counted"] == {"RESHAPE": 1}


def test_a_file_the_counter_cannot_read_keeps_the_citation_and_says_why(tmp_path):
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    proxy = energy_proxy(notes)
    assert proxy["method"] == "analytic proxy" and "error" in proxy and "uj_per_inference" not in proxy
    assert proxy["source"] == SOURCE
