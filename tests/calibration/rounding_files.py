"""Shared check of the weight-rounding tests (AdaRound, GPTQ): the ONNX QDQ and the TFLite file written from a
rounded model hold exactly its integers, on its scales."""

from __future__ import annotations

import numpy as np
import onnx
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
from edgepack.converters.qdq import dequantized_constants, quantized_constants, write_qdq_model
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import QuantPlan
from tests.calibration.test_quantize_stage import tflite_parameters


def assert_both_files_hold_its_integers(rounded: onnx.ModelProto, plan: QuantPlan, data: ArrayDataset,
                                        scheme: QuantScheme, input_shape: list[int], folder) -> None:  # fmt: skip
    learned = quantized_constants(rounded.graph, plan, {})
    calibration = calibrate(rounded, data, scheme)
    rounded_path, onnx_path, tflite_path = folder / "rounded.onnx", folder / "int8.onnx", folder / "int8.tflite"
    onnx.save(rounded, str(rounded_path))
    write_qdq_model(rounded, onnx_path, calibration.plan, calibration.activations)
    constants = dequantized_constants(rounded.graph, calibration.plan, calibration.activations)
    convert_onnx_to_tflite(rounded_path, tflite_path, {"image": input_shape},
                           FakeQuantization(calibration.fake_quant_ranges(), 8, constants=constants))  # fmt: skip
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    tflite_weights = tflite_int8_weights(tflite_path)
    for weight in plan.weights:
        q = learned[weight.initializer][0]
        np.testing.assert_array_equal(written[f"{weight.initializer}_quantized"], q)
        assert any(_same_integers(q, t) for t in tflite_weights), weight.initializer
    scales = [np.float32(learned[w.initializer][1].scale) for w in plan.weights]
    _, tflite_scales = tflite_parameters(tflite_path)
    assert all(any(np.array_equal(s, t) for t in tflite_scales) for s in scales)


def tflite_int8_weights(path) -> list[np.ndarray]:
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
