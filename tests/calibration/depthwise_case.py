"""The case cross-layer equalization exists for, built honestly from a digits-trained depthwise net.

Real MobileNets collapse under per-tensor int8 because the per-channel weight ranges of their depthwise convs
differ by orders of magnitude. A net this small, trained a few epochs, does not get there by itself, so the trained
model is rescaled the way training can leave one: around each ReLU, channel i of the layer before is multiplied by
d_i (through its BatchNorm's gamma and beta) and input channel i of the layer after by 1 / d_i, with d_i
log-uniform over three decades. relu(d x) = d relu(x) for d > 0, so the float function is unchanged; this is
exactly the imbalance cross-layer equalization undoes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from edgepack.converters.runtime import open_session
from edgepack.converters.verify import predict

from edgepack.core.dataset import ArrayDataset
from tests import models

EPOCHS = 15
DECADES = (-2.0, 1.0)  # d_i = 10 ** uniform(-2, 1)


def trained_weights(tmp_path_factory) -> Path:
    """Trained once per session (whichever test module asks first)."""
    path = tmp_path_factory.getbasetemp() / "depthwise_relu_net.pt"
    if not path.is_file():
        models.train_and_save("depthwise_relu_net", path, epochs=EPOCHS)
    return path


def spread_channel_ranges(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Function-preserving, in conv(0)-bn(1)-relu -> dw(3)-bn(4)-relu -> pw(6): bn 1 x d with dw inputs / d, and
    bn 4 x d' with pw inputs / d'."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for norm, following in ((model[1], model[3]), (model[4], model[6])):
            factors = torch.from_numpy(10 ** rng.uniform(*DECADES, norm.weight.shape[0])).float()
            norm.weight.mul_(factors)
            norm.bias.mul_(factors)
            depthwise = following.groups > 1
            following.weight.div_(factors.view(-1, 1, 1, 1) if depthwise else factors.view(1, -1, 1, 1))
    return model


def load_model(weights: Path, *, spread: bool) -> torch.nn.Module:
    model = models.depthwise_relu_net()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return spread_channel_ranges(model) if spread else model


def export(model: torch.nn.Module, path: Path) -> onnx.ModelProto:
    """The legacy exporter folds each BatchNorm into its conv: Conv -> Relu -> Conv chains, as CLE needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"])  # fmt: skip
    return onnx.load(str(path))


def top1(path: Path, data: ArrayDataset) -> float:
    """Accuracy measured in the file's own runtime (onnxruntime or LiteRT)."""
    return float(np.mean(predict(open_session(path), data, 1)["logits"].argmax(1) == data.labels))


def tflite_weights(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scales, int8 values) of every constant int8 tensor with a scale (the layer weights)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    found = []
    for detail in interpreter.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        if detail["dtype"] == np.int8 and len(scales):
            try:
                found.append((scales, interpreter.get_tensor(detail["index"])))
            except ValueError:
                continue  # activations have no data before invoke
    return found
