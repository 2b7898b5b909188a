"""Load the model a recipe names, and run it as the reference every artifact is compared against."""

from __future__ import annotations

import hashlib
import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgepack.converters.onnx_info import external_data_files
from edgepack.converters.torch_to_onnx import quiet_logger
from edgepack.core.artifacts import sha256_file
from edgepack.core.errors import ModelFileError, RecipeError
from edgepack.recipe import ModelConfig, ModelFormat
from edgepack.running.cache import cache_key


@dataclass
class LoadedModel:
    """The source model in memory (torch) or on disk (ONNX), with a hash of its content."""

    format: ModelFormat
    sha256: str
    module: torch.nn.Module | None = None  # eager, scripted, or the module of a torch.export program
    exported_program: object | None = None  # torch.export.ExportedProgram for .pt2 sources
    file_path: Path | None = None  # the ONNX or TFLite source file (torch sources live in memory)
    input_hashes: dict[str, str] = field(default_factory=dict)  # file -> sha256, recorded in the run


def load_model(config: ModelConfig, recipe_folder: Path | None = None) -> LoadedModel:
    """The model ``config`` names; a factory module may sit in ``recipe_folder`` (the recipe file's)."""
    loaders = {
        ModelFormat.TORCHSCRIPT: _load_torchscript,
        ModelFormat.TORCH_EXPORT: _load_torch_export,
        ModelFormat.ONNX: _load_onnx,
        ModelFormat.TFLITE: _load_tflite,
    }
    if config.path is not None and config.path.is_dir():
        raise ModelFileError(f"model file {config.path} is a directory (model.path in the recipe); give the model file")
    if config.path is not None and not config.path.is_file():
        raise ModelFileError(f"model file {config.path} does not exist (model.path in the recipe)")
    if config.factory is not None:
        return _load_factory(config, recipe_folder)
    return loaders[ModelFormat(config.format)](config)


def _load_factory(config: ModelConfig, recipe_folder: Path | None) -> LoadedModel:
    module = _call_factory(config.factory, recipe_folder)
    hashes = {}
    if config.weights is not None:
        _load_weights(module, config.weights)
        hashes[str(config.weights)] = sha256_file(config.weights)
    module.eval()
    return LoadedModel(ModelFormat.TORCH, module_sha256(module), module=module, input_hashes=hashes)


def _call_factory(spec: str, recipe_folder: Path | None = None) -> torch.nn.Module:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RecipeError(f"model.factory {spec!r} must look like 'package.module:callable'")
    if recipe_folder is not None and str(recipe_folder) not in sys.path:
        # A factory module beside the recipe imports as a script's neighbour does, without the user's PYTHONPATH.
        sys.path.insert(0, str(recipe_folder))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as e:
        raise RecipeError(f"model.factory {spec!r}: module {module_name!r} cannot be imported ({e})") from e
    except AttributeError as e:
        raise RecipeError(f"model.factory {spec!r}: {module_name} has no attribute {attr!r}") from e
    try:
        model = factory()
    except Exception as e:  # the user's code: say it was the factory, with its own message
        raise RecipeError(f"model.factory {spec!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise RecipeError(f"model.factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    if path.is_dir():
        raise ModelFileError(f"weights file {path} is a directory (model.weights in the recipe); name the .pt file")
    if not path.is_file():
        raise ModelFileError(f"weights file {path} does not exist (model.weights in the recipe)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a file that is not a state_dict
        raise ModelFileError(
            f"weights file {path} is not a torch state_dict that loads safely (weights-only; {_unpickle_reason(e)}); "
            "re-save it with torch.save(model.state_dict(), PATH) from the code that built the model"
        ) from e
    if not isinstance(state, dict):
        raise ModelFileError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ raise even when strict=False
        mismatch = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise ModelFileError(f"weights file {path} does not fit the factory's module: {mismatch}") from e
    if missing or unexpected:
        raise ModelFileError(
            f"weights file {path} does not fit the factory's module: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )


def _unpickle_reason(error: Exception) -> str:
    """Torch's reason without its advice to turn weights-only loading off: never give that advice."""
    text = " ".join(str(error).split())
    reason = text.partition("WeightsUnpickler error:")[2] or text
    reason = reason.split(". Please")[0].split(" Check the documentation")[0].strip()
    return reason if reason and "weights_only" not in reason else type(error).__name__


def _load_torchscript(config: ModelConfig) -> LoadedModel:
    try:
        module = torch.jit.load(str(config.path), map_location="cpu")
    except Exception as e:
        raise ModelFileError(
            f"{config.path} is not a TorchScript file (torch.jit.load failed: {e}); "
            "for a state_dict use model.factory + model.weights"
        ) from e
    module.eval()
    return LoadedModel(
        ModelFormat.TORCHSCRIPT,
        sha256_file(config.path),
        module=module,
        input_hashes={str(config.path): sha256_file(config.path)},
    )


def _load_torch_export(config: ModelConfig) -> LoadedModel:
    try:
        # torch.export logs its own traceback before raising; the error below names the file instead.
        with quiet_logger("torch.export", logging.CRITICAL):
            program = torch.export.load(str(config.path))
    except Exception as e:
        raise ModelFileError(f"{config.path} is not a torch.export (.pt2) file: {e}") from e
    digest = sha256_file(config.path)
    return LoadedModel(
        ModelFormat.TORCH_EXPORT,
        digest,
        module=program.module(),
        exported_program=program,
        input_hashes={str(config.path): digest},
    )


def _load_onnx(config: ModelConfig) -> LoadedModel:
    import onnx

    try:
        onnx.checker.check_model(str(config.path))
    except Exception as e:
        raise ModelFileError(f"{config.path} is not a valid ONNX model: {e}") from e
    _check_onnx_inputs(config)
    # Weights kept in a sidecar are part of the model's content (a retrained model may change only them).
    digest = cache_key(sha256_file(config.path), *(sha256_file(f) for f in external_data_files(config.path)))
    return LoadedModel(ModelFormat.ONNX, digest, file_path=config.path, input_hashes={str(config.path): digest})


def _check_onnx_inputs(config: ModelConfig) -> None:
    """model.inputs must name the file's inputs, with shapes its fixed dimensions accept."""
    from edgepack.converters.onnx_info import load_onnx, tensor_specs

    model = load_onnx(config.path)
    specs = {s.name: s.shape for s in tensor_specs(model.graph.input, {t.name for t in model.graph.initializer})}
    given = {i.name: i.shape for i in config.inputs}
    if set(given) != set(specs):
        raise RecipeError(
            f"model.inputs names {sorted(given)} but {config.path} has the inputs {sorted(specs)}; "
            "use the file's input names (edgepack inspect FILE lists them)"
        )
    for name, shape in given.items():
        if not specs[name]:
            continue  # the file gives no shape for it
        if len(shape) != len(specs[name]) or any(f > 0 and f != g for f, g in zip(specs[name], shape, strict=True)):
            raise RecipeError(
                f"model.inputs {name!r} has shape {shape} but input {name!r} of {config.path} has shape {specs[name]} "
                "(dimensions <= 0 are free); give a shape that fits the file"
            )


def _load_tflite(config: ModelConfig) -> LoadedModel:
    from edgepack.converters.runtime import describe_tflite

    describe_tflite(config.path)  # a file that is not TFLite fails here, naming it
    digest = sha256_file(config.path)
    return LoadedModel(ModelFormat.TFLITE, digest, file_path=config.path, input_hashes={str(config.path): digest})


def module_sha256(module: torch.nn.Module) -> str:
    """Hash of architecture and weights, so a changed weight or layer changes every downstream cache key."""
    digest = hashlib.sha256(repr(module).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_torch(module: torch.nn.Module, feeds: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """Run the torch model on numpy inputs; outputs named by ``config.output_names``."""
    args = [torch.from_numpy(np.ascontiguousarray(feeds[spec.name])) for spec in config.inputs]
    try:
        with torch.no_grad():
            result = module(*args)
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:  # exported programs assert on shapes
        shapes = {spec.name: list(feeds[spec.name].shape) for spec in config.inputs}
        raise RecipeError(
            f"the model rejected inputs of shapes {shapes} built from model.inputs; check each input's shape "
            f"and dtype (and their order) in the recipe. torch said: {str(e).splitlines()[0]}"
        ) from e
    outputs = [result] if isinstance(result, torch.Tensor) else list(result)
    if len(outputs) != len(config.output_names):
        raise RecipeError(
            f"the model returns {len(outputs)} outputs but model.output_names lists "
            f"{len(config.output_names)}: {config.output_names}"
        )
    return {name: out.detach().numpy() for name, out in zip(config.output_names, outputs, strict=True)}
