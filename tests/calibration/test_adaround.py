"""AdaRound: learned rounding lowers each layer's output error against float, on the same scales, and both files
hold exactly the learned integers."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from edgepack.calibration.adaround import adaround_model
from edgepack.calibration.plan import plan_quantization
from edgepack.calibration.ptq import QuantScheme
from edgepack.converters.qdq import quantized_constants

from edgepack.core.dataset import ArrayDataset
from tests.calibration.rounding_files import assert_both_files_hold_its_integers
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

    assert_both_files_hold_its_integers(rounding.model, plan, data, QuantScheme(), SHAPE, tmp_path)
