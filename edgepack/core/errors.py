"""One error hierarchy for the whole pipeline.

User errors (bad recipe, bad file, missing data, unsupported operator) are raised at once and say what was
passed, what is allowed and what to do. Tool failures are wrapped with ``raise StageError(...) from e`` so the
step is named. The CLI prints ``str(error)`` on one line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgepackError(Exception):
    """Base class of every error edgepack raises on purpose."""


class UserError(EdgepackError):
    """Something the user passed is wrong; the message says what to change."""


class RecipeError(UserError):
    """The recipe (YAML or --set override) is invalid."""


class ModelFileError(UserError):
    """A model file is missing, unreadable, or not the format it claims to be."""


class DataError(UserError):
    """Evaluation or calibration data is missing, empty, or does not fit the model's inputs."""


class UnsupportedOperatorError(UserError):
    """An ONNX node has no lowering to the target format."""

    def __init__(self, op_type: str, node_name: str, detail: str = "", supported: Iterable[str] = ()):
        self.op_type = op_type
        self.node_name = node_name
        message = f"ONNX node {node_name!r} (op {op_type}) cannot be converted"
        message += f": {detail}" if detail else ": no lowering is registered for this op type"
        names = sorted(supported)
        if names:
            message += f". Supported op types: {', '.join(names)}"
        super().__init__(message)


class PruningError(UserError):
    """A pruning setting (sparsity, ratio, layer name) or model that pruning cannot handle; says what to change."""


class LowRankError(UserError):
    """A low-rank setting (rank, energy, layer name or kind, saved structure) that does not fit the model."""


class FinetuneError(UserError):
    """A fine-tuning setting (teacher, feature-matching layers and their shapes) that does not fit the models."""


class QuantizationError(UserError):
    """A quantization that cannot be written as asked: an accuracy target no integer file reaches, or a file that
    would run most of its MACs outside the precision it is named after. Says the figures and what to change."""


class StageError(EdgepackError):
    """A tool failed inside a stage; the stage is named and the cause chained."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"{stage}: {message}")


class VerificationError(EdgepackError):
    """An artifact's outputs differ from the reference by more than the tolerance."""

    def __init__(self, artifact: str, metric: str, measured: float, tolerance: float, detail: str = "",
                 floor: bool = False):  # fmt: skip
        """``floor``: the tolerance is a lowest allowed value (a cosine), not a highest (an error)."""
        self.artifact = artifact
        self.metric = metric
        self.measured = measured
        self.tolerance = tolerance
        if floor:  # cosines and agreements near 1: enough digits that 0.99997 never prints as 1
            message = f"{artifact}: {metric} {measured:.6g} is below the floor {tolerance:.7g}"
        else:
            message = f"{artifact}: {metric} {measured:.3g} exceeds the tolerance {tolerance:.3g}"
        super().__init__(message + (f" ({detail})" if detail else ""))


class BenchError(EdgepackError):
    """A benchmark could not run on its target; the message names the target and the cause."""


def closest_names(name: str, allowed: Iterable[str], n: int = 3) -> list[str]:
    """The allowed names closest to a misspelt one, for 'did you mean' hints."""
    import difflib

    return difflib.get_close_matches(name, list(allowed), n=n, cutoff=0.5)
