"""The integer TFLite lowering is right wherever the float one is: each integer file, run in its own runtime, stays
within quantization error of the float model, and the TFLite file is as close to float as the ONNX QDQ file of the
same calibration (the scales being equal is not enough: a weight order can still be wrong).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgepack.core.dataset import ArrayDataset
from tests.converters import arch_layout, arch_vision
from tests.converters.integer_check import cosine, quantize_both, run_onnx, run_tflite_each, sqnr_db
from tests.converters.test_architectures_vision import cnn
from tests.converters.torch_check import calibrate_batchnorm, export


@pytest.fixture(scope="module")
def digits28():
    return arch_layout.digits_28("train"), arch_layout.digits_28("test")


def top1(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean(outputs["logits"].argmax(1) == labels))


LAYOUT_CASES = [(net, "int8") for net in arch_layout.LAYOUT_NETS]
LAYOUT_CASES += [(net, "int16x8") for net in arch_layout.LAYOUT_NETS if net is not arch_layout.ConcatMeanNet]


@pytest.mark.parametrize(("net", "precision"), LAYOUT_CASES, ids=lambda case: getattr(case, "__name__", case))
def test_nchw_sensitive_classifier_keeps_its_accuracy_in_both_integer_files(tmp_path, digits28, net, precision):
    (train, _), (test, labels) = digits28
    outputs = ["logits", "embedding"] if net is arch_layout.FlattenAlsoOutputNet else ["logits"]
    module = arch_layout.trained_on_digits_28(net)
    float_onnx = export(module, tmp_path / "float.onnx", (torch.zeros(1, 1, 28, 28),), ["image"], outputs)
    files = quantize_both(float_onnx, ArrayDataset({"image": train[:256]}), precision)
    feeds = {"image": test[:120]}
    reference = run_onnx(float_onnx, feeds)
    assert top1(reference, labels[:120]) >= 0.3  # trained, so the comparison is between meaningful outputs
    measured = {"onnx": run_onnx(files.onnx_path, feeds), "tflite": run_tflite_each(files.tflite_path, feeds)}
    for runtime, actual in measured.items():
        for output, values in reference.items():
            assert actual[output].shape == values.shape
            similarity = cosine(values, actual[output])
            assert similarity >= 0.995, f"{runtime} {output}: cosine {similarity:.4f}"  # the bug: 0.06
        assert top1(actual, labels[:120]) >= top1(reference, labels[:120]) - 0.01, runtime


def image_batch(count: int, shape: list[int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal([count, *shape[1:]]).astype(np.float32)


# name -> (module factory, input shape, output names). Random weights with BatchNorm statistics set from data.
IMAGE = [1, 3, 64, 64]
VISION_ZOO = {
    "mobilenet_v2": (lambda: cnn(arch_vision.MobileNetV2(width=0.35, classes=10)), IMAGE, ["logits"]),
    "mobilenet_v3_small": (lambda: cnn(arch_vision.MobileNetV3Small(width=0.5, classes=10)), IMAGE, ["logits"]),
    "efficientnet_b0": (lambda: cnn(arch_vision.EfficientNetB0(0.5, 0.5, classes=10)), IMAGE, ["logits"]),
    "efficientnet_lite": (lambda: cnn(arch_vision.EfficientNetB0(0.5, 0.5, classes=10, lite=True)), IMAGE, ["logits"]),
    "resnet18": (lambda: cnn(arch_vision.ResNet18(width=0.25, classes=10)), IMAGE, ["logits"]),
    "unet": (lambda: cnn(arch_vision.UNet()), IMAGE, ["mask"]),
    "detector": (lambda: cnn(arch_vision.Detector(anchors=3, classes=5)), IMAGE, ["boxes", "scores"]),
    "audio": (lambda: calibrate_batchnorm(arch_vision.AudioNet(), [4, 1, 4000]), [1, 1, 4000], ["logits"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VISION_ZOO))
def test_int8_tflite_is_as_close_to_float_as_the_int8_onnx_file(tmp_path, name):
    factory, shape, outputs = VISION_ZOO[name]
    torch.manual_seed(0)
    float_onnx = export(factory(), tmp_path / f"{name}.onnx", (torch.zeros(shape),), ["image"], outputs)
    files = quantize_both(float_onnx, ArrayDataset({"image": image_batch(96, shape, seed=1)}), "int8")
    feeds = {"image": image_batch(24, shape, seed=2)}
    reference, onnx_int8 = run_onnx(float_onnx, feeds), run_onnx(files.onnx_path, feeds)
    tflite_int8 = run_tflite_each(files.tflite_path, feeds)
    for output, values in reference.items():
        onnx_sqnr, tflite_sqnr = sqnr_db(values, onnx_int8[output]), sqnr_db(values, tflite_int8[output])
        # Random deep nets lose much to int8 (MobileNetV2 ~4 dB); what is asserted is that TFLite loses no more.
        assert tflite_sqnr >= onnx_sqnr - 1.0, f"{output}: TFLite {tflite_sqnr:.1f} dB vs ONNX {onnx_sqnr:.1f} dB"
        assert cosine(onnx_int8[output], tflite_int8[output]) >= 0.99


def test_int16_qdq_file_of_an_opset_17_reduce_mean_is_valid_and_runs(tmp_path):
    # ReduceMean's axes moved from attribute to input at opset 18; the int16 QDQ file needs opset 21.
    from tests.converters.conftest import make_model

    nodes = [onnx.helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0, name="mean"),
             onnx.helper.make_node("Relu", ["m"], ["y"], name="relu")]  # fmt: skip
    float_onnx = tmp_path / "mean.onnx"
    onnx.save(make_model(nodes, {"x": [1, 4, 5, 5]}, ["y"], opset=17), str(float_onnx))
    files = quantize_both(float_onnx, ArrayDataset({"x": image_batch(32, [1, 4, 5, 5], seed=3)}), "int16x8")
    written = onnx.load(str(files.onnx_path))
    assert max(o.version for o in written.opset_import if o.domain == "") == 21
    feeds = {"x": image_batch(8, [1, 4, 5, 5], seed=4)}
    assert sqnr_db(run_onnx(float_onnx, feeds)["y"], run_onnx(files.onnx_path, feeds)["y"]) > 60
