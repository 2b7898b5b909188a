"""AdaRound: learned rounding lowers each layer's output error against float, on the same scales, and both files
hold exactly the learned integers."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from edgepack.calibration.adaround import adaround_model
from edgepack.calibration.plan import plan_quantization
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
from edgepack.converters.qdq import dequantized_constants, quantized_constants, write_qdq_model
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from tests.calibration.test_quantize_stage import tflite_parameters
from tests.converters.torch_check import calibrate_batchnorm, export
from tests.models import conv_net

SHAPE = [1, 1, 8, 8]


def test_adaround_lowers_every_layer_error_and_both_files_hold_its_integers_on_the_same_scales(tmp_path):
    torch.manual_seed(0)
    module = calibrate_batchnorm(conv_net(), SHAPE)
    path = export(module, tmp_path / "net.onnx", (torch.zeros(SHAPE),), ["image"], ["logits"])
    model = onnx.load(str(path))
    data = ArrayDataset({"image": np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32)})
    plan = plan_quantization(model)
    rounding = adaround_model(model, plan, data, iterations=300)

    assert [layer["node"] for layer in rounding.layers] == [w.node for w in plan.weights]  # two Convs and the Gemm
    errors = {layer["node"]: (layer["mse_nearest"], layer["mse_adaround"]) for layer in rounding.layers}
    assert all(learned <= nearest for nearest, learned in errors.values())  # never worse: nearest is the fallback
    # measured: 2.9e-5 -> 1.3e-5 (second Conv), 2.7e-6 -> 1.5e-6 (Gemm); the first Conv (9 weights a channel) keeps
    # nearest rounding
    assert sum(learned < 0.75 * nearest for nearest, learned in errors.values()) >= 2, errors
    nearest = quantized_constants(model.graph, plan, {})
    learned = quantized_constants(rounding.model.graph, plan, {})
    for weight in plan.weights:
        (q0, p0), (q1, p1) = nearest[weight.initializer], learned[weight.initializer]
        np.testing.assert_array_equal(p0.scale, p1.scale)  # the scales are unchanged
        assert np.mean(q0 != q1) < 0.5 and np.abs(q0.astype(int) - q1).max() <= 1  # up or down, never further

    calibration = calibrate(rounding.model, data, QuantScheme())
    rounded_path, onnx_path, tflite_path = tmp_path / "rounded.onnx", tmp_path / "int8.onnx", tmp_path / "int8.tflite"
    onnx.save(rounding.model, str(rounded_path))
    write_qdq_model(rounding.model, onnx_path, calibration.plan, calibration.activations)
    constants = dequantized_constants(rounding.model.graph, calibration.plan, calibration.activations)
    convert_onnx_to_tflite(rounded_path, tflite_path, {"image": SHAPE},
                           FakeQuantization(calibration.fake_quant_ranges(), 8, constants=constants))  # fmt: skip
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    tflite_weights = _tflite_int8_weights(tflite_path)
    for weight in plan.weights:
        q = learned[weight.initializer][0]
        np.testing.assert_array_equal(written[f"{weight.initializer}_quantized"], q)
        assert any(_same_integers(q, t) for t in tflite_weights), weight.initializer
    scales = [np.float32(learned[w.initializer][1].scale) for w in plan.weights]
    _, tflite_scales = tflite_parameters(tflite_path)
    assert all(any(np.array_equal(s, t) for t in tflite_scales) for s in scales)


def _tflite_int8_weights(path) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    found = []
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["quantization_parameters"]["scales"]) > 1:
            found.append(interpreter.get_tensor(detail["index"]))
    return found


def _same_integers(onnx_q: np.ndarray, tflite_q: np.ndarray) -> bool:
    """A Conv weight is OIHW in ONNX and OHWI in TFLite; a Gemm's [N, K] is the same in both."""
    candidate = np.transpose(onnx_q, (0, 2, 3, 1)) if onnx_q.ndim == 4 else onnx_q
    return candidate.shape == tflite_q.shape and np.array_equal(candidate, tflite_q)
