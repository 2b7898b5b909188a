"""Export a torch architecture to ONNX, convert it, and compare LiteRT with onnxruntime and with torch."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from edgepack.converters.onnx_to_tflite import TFLiteConversion
from torch import nn

from tests.converters.conftest import convert_and_compare, worst_error


@dataclass
class ArchitectureResult:
    conversion: TFLiteConversion
    onnx_ops: Counter
    vs_ort: tuple[float, float]  # (max abs error, tolerance) of the worst output
    vs_torch: tuple[float, float]

    @property
    def ops(self) -> dict[str, int]:
        return self.conversion.op_counts

    def assert_matches(self) -> None:
        for reference, (error, tolerance) in (("onnxruntime", self.vs_ort), ("torch", self.vs_torch)):
            assert error <= tolerance, f"vs {reference}: max abs error {error:.3g} > tolerance {tolerance:.3g}"


def calibrate_batchnorm(module: nn.Module, shape: list[int], seed: int = 0) -> nn.Module:
    """Set every BatchNorm's statistics from random inputs, as brief training would, so that activations keep
    their scale through a deep random network (otherwise the output barely depends on the input)."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # A plain average over the calibration batches.
    module.train()
    with torch.no_grad():
        for _ in range(2):
            module(torch.randn(*shape, generator=generator))
    return module.eval()


def export(module: nn.Module, path: Path, examples: tuple, inputs: list[str], outputs: list[str], **options) -> Path:
    """torch.onnx.export with a dynamic batch axis; ``dynamo`` (default False: legacy) and ``opset`` options."""
    dynamo, opset = options.get("dynamo", False), options.get("opset", 17)
    kwargs = {"dynamo": True} if dynamo else {"dynamo": False, "opset_version": opset}
    kwargs["dynamic_axes"] = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), examples, str(path), input_names=inputs, output_names=outputs, **kwargs)
    return path


def torch_outputs(module: nn.Module, examples: tuple, outputs: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        result = module(*examples)
    result = (result,) if isinstance(result, torch.Tensor) else result
    return {name: tensor.numpy() for name, tensor in zip(outputs, result, strict=True)}


def check_architecture(
    module: nn.Module, examples: tuple, folder: Path, inputs: list[str], outputs: list[str], **options
) -> ArchitectureResult:
    """Export (options: dynamo, opset, input_shapes), convert, run on ``examples``, compare with ORT and torch."""
    name = f"{type(module).__name__}_{'dynamo' if options.get('dynamo') else 'legacy'}_{options.get('opset', 17)}"
    onnx_path = export(module, folder / f"{name}.onnx", examples, inputs, outputs, **options)
    feeds = {n: t.numpy() for n, t in zip(inputs, examples, strict=True)}
    shapes = options.get("input_shapes")
    comparison = convert_and_compare(onnx_path, folder / f"{name}.tflite", feeds=feeds, input_shapes=shapes)
    vs_torch = worst_error(torch_outputs(module, examples, outputs), comparison.actual)
    onnx_ops = Counter(node.op_type for node in onnx.load(str(onnx_path)).graph.node)
    return ArchitectureResult(comparison.conversion, onnx_ops, (comparison.max_error, comparison.tolerance), vs_torch)
