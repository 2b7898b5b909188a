"""torch -> ONNX (float32), checked with the ONNX checker before it is handed on."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from edgepack.core.artifacts import atomic_path
from edgepack.core.errors import StageError


def export_to_onnx(
    model: torch.nn.Module | object,
    example: tuple[torch.Tensor, ...],
    out_path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamo: bool,
) -> None:
    """Export ``model`` (an nn.Module, ScriptModule or torch.export program) and write ``out_path`` atomically."""
    import onnx

    with atomic_path(Path(out_path)) as tmp:
        try:
            _quiet_export(model, example, tmp, input_names, output_names, opset, dynamo)
            _strip_stack_traces(tmp)
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            how = "dynamo" if dynamo else "legacy (TorchScript-based)"
            raise StageError(
                "export",
                f"torch.onnx.export ({how} exporter, opset {opset}) failed: {_summary(e)}. "
                "Try the other exporter: 'exporter: legacy' or 'exporter: dynamo' in the export stage",
            ) from e


# Python stack traces with the build machine's absolute paths: they would ship inside the app and make the
# bytes depend on where edgepack ran. The module hierarchy ('namespace', 'class_hierarchy') stays: it has no paths.
PATH_BEARING_METADATA = {"pkg.torch.onnx.stack_trace"}


def _strip_stack_traces(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key not in PATH_BEARING_METADATA]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def _summary(error: Exception) -> str:
    """The line that says what went wrong; the dynamo exporter wraps it in a page of advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "## Exception summary" in lines:
        return lines[lines.index("## Exception summary") + 1]
    return lines[0] if lines else type(error).__name__


def _quiet_export(model, example, path: Path, input_names, output_names, opset: int, dynamo: bool) -> None:
    # The dynamo exporter prints progress lines to stdout; the pipeline shows its own progress instead.
    kwargs = dict(input_names=input_names, output_names=output_names, opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs.update(external_data=False, optimize=True, verbose=False)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), **kwargs)


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Logger ``name`` below ``level`` silenced for the block: torch's exporters log warnings and tracebacks of their
    own (a warning per torchvision op they cannot register; torch.export's traceback before it raises) where edgepack
    reports the outcome in one line."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def example_inputs(feeds: dict[str, np.ndarray], names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names)
