"""Session fixtures: the tiny models of tiny_models.py, each built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.device_bench import tiny_models


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Path:
    return tiny_models.write_conv_relu_onnx(tmp_path_factory.mktemp("onnx") / "conv_relu.onnx")


@pytest.fixture(scope="session")
def tflite_model(tmp_path_factory) -> Path:
    return tiny_models.write_conv_relu_tflite(tmp_path_factory.mktemp("tflite") / "conv_relu.tflite")
