"""Mobile CNNs, a U-Net, a detector head and a 1-D audio net: exported from torch, converted, run in LiteRT and
compared with onnxruntime and torch; conv nets keep NHWC from input to output with no TRANSPOSE at all.

Narrow copies at 64x64 keep this fast; benchmarks/convert_architectures.py converts the full-size ones.
"""

from __future__ import annotations

import pytest
import torch

from tests.converters.arch_vision import (
    AudioNet,
    Detector,
    EfficientNetB0,
    InvertedResidual,
    MobileNetV2,
    MobileNetV3Small,
    ResNet18,
    UNet,
)
from tests.converters.torch_check import calibrate_batchnorm, check_architecture

SIZE = 64


def image(batch: int = 1, size: int = SIZE) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)),)


def cnn(module, shape=(4, 3, SIZE, SIZE)):
    torch.manual_seed(0)
    return calibrate_batchnorm(module, list(shape))


def check_image_classifier(module, tmp_path, **options):
    result = check_architecture(module, options.pop("examples", image()), tmp_path, ["image"], ["logits"], **options)
    result.assert_matches()
    assert result.ops.get("TRANSPOSE", 0) == 0, result.ops
    (spec,) = result.conversion.inputs
    assert (spec.layout, spec.perm_from_onnx) == ("NHWC", [0, 2, 3, 1])
    return result


@pytest.mark.parametrize("dynamo", [False, True])
def test_mobilenet_v2(tmp_path, dynamo):
    module = cnn(MobileNetV2(width=0.35, classes=10))
    result = check_image_classifier(module, tmp_path, dynamo=dynamo)
    # 52 convolutions, 17 depthwise, with BatchNorm and ReLU6 fused in; one ADD per residual block.
    residuals = sum(1 for m in module.modules() if isinstance(m, InvertedResidual) and m.skip)
    assert (result.ops["CONV_2D"], result.ops["DEPTHWISE_CONV_2D"]) == (35, 17), result.ops
    assert result.ops["ADD"] == residuals == 11
    assert result.onnx_ops["Clip"] == 35  # The ReLU6s really were in the ONNX file.


@pytest.mark.parametrize("dynamo", [False, True])
def test_mobilenet_v3_small_hard_swish_and_squeeze_excite(tmp_path, dynamo):
    result = check_image_classifier(cnn(MobileNetV3Small(width=0.5, classes=10)), tmp_path, dynamo=dynamo)
    assert result.ops["HARD_SWISH"] == 19 and result.ops["DEPTHWISE_CONV_2D"] == 11, result.ops
    assert result.onnx_ops["HardSigmoid"] == 9 and result.ops["MEAN"] == 10  # 9 squeeze-excite + the head


def test_efficientnet_b0_silu_and_sigmoid_gates(tmp_path):
    result = check_image_classifier(cnn(EfficientNetB0(width=0.5, depth=0.5, classes=10)), tmp_path)
    assert result.ops["DEPTHWISE_CONV_2D"] == 10 and result.ops["LOGISTIC"] == 41, result.ops


def test_efficientnet_lite_has_only_fused_activations(tmp_path):
    result = check_image_classifier(cnn(EfficientNetB0(width=0.5, depth=0.5, classes=10, lite=True)), tmp_path)
    assert "LOGISTIC" not in result.ops and "MUL" not in result.ops, result.ops


def test_resnet18_dynamic_batch_fixed_at_conversion(tmp_path):
    examples = image(batch=2)
    result = check_image_classifier(
        cnn(ResNet18(width=0.25, classes=10)), tmp_path, examples=examples, input_shapes={"image": [2, 3, 64, 64]}
    )
    assert result.conversion.inputs[0].shape == [2, SIZE, SIZE, 3]
    assert (result.ops["CONV_2D"], result.ops["ADD"], result.ops["MAX_POOL_2D"]) == (20, 8, 1), result.ops


@pytest.mark.parametrize("dynamo", [False, True])
def test_unet_upsamples_and_concatenates_skips_in_nhwc(tmp_path, dynamo):
    result = check_architecture(cnn(UNet()), image(), tmp_path, ["image"], ["mask"], dynamo=dynamo)
    result.assert_matches()
    assert result.ops.get("TRANSPOSE", 0) == 0, result.ops
    assert result.ops["TRANSPOSE_CONV"] == 1 and result.ops["RESIZE_BILINEAR"] == 1, result.ops
    assert result.ops["CONCATENATION"] == 2
    (mask,) = result.conversion.outputs
    assert (mask.name, mask.layout, mask.shape) == ("mask", "NHWC", [1, SIZE, SIZE, 3])


@pytest.mark.parametrize("dynamo", [False, True])
def test_detector_head_keeps_both_named_outputs(tmp_path, dynamo):
    module = cnn(Detector(anchors=3, classes=5))
    result = check_architecture(module, image(), tmp_path, ["image"], ["boxes", "scores"], dynamo=dynamo)
    result.assert_matches()
    assert result.ops.get("TRANSPOSE", 0) == 0, result.ops  # permute(0, 2, 3, 1) of NHWC features is free.
    anchors = 3 * (16 * 16 + 8 * 8)
    shapes = {spec.name: spec.shape for spec in result.conversion.outputs}
    assert shapes == {"boxes": [1, anchors, 4], "scores": [1, anchors, 5]}


def test_audio_net_runs_1d_convolutions_channels_last(tmp_path):
    module = calibrate_batchnorm(AudioNet(), [4, 1, 4000])
    waveform = (torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(2)),)
    result = check_architecture(module, waveform, tmp_path, ["waveform"], ["logits"])
    result.assert_matches()
    assert result.ops.get("TRANSPOSE", 0) == 0 and result.ops["CONV_2D"] == 2, result.ops
    assert result.ops["DEPTHWISE_CONV_2D"] == 1 and result.ops["MAX_POOL_2D"] == 2
    (spec,) = result.conversion.inputs
    assert (spec.shape, spec.layout) == ([1, 4000, 1], "NWC")
