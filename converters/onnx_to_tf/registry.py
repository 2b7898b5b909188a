"""The op registry: one lowering function per ONNX op type, and the values they pass along.

A lowering receives a ``Node`` (its ONNX attributes and input ``Value``s) and returns the output ``Value``s.
Constants stay numpy (shapes, axes, pads, weights) so lowerings can inspect them; only real data is tf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.core.errors import UnsupportedOperatorError


@dataclass
class Value:
    """A tensor in the lowering environment.

    ``perm`` says how the stored tensor relates to the ONNX one: ``stored = onnx.transpose(perm)``; None means
    ONNX order. Channels-last (NHWC) is ``(0, 2, 3, 1)``. Constants are always numpy in ONNX order.
    """

    data: Any
    perm: tuple[int, ...] | None = None
    # Set only on a flattened [N, K] tensor whose consumers are all dense layers (Gemm/MatMul with constant
    # weights): the ONNX feature index of each stored feature. Those layers permute their weight rows to match,
    # so flattening channels-last features needs no transpose.
    feature_order: np.ndarray | None = None

    @property
    def is_constant(self) -> bool:
        return isinstance(self.data, np.ndarray)

    @property
    def rank(self) -> int:
        return len(self.data.shape)

    @property
    def onnx_shape(self) -> list[int]:
        shape = [int(d) for d in self.data.shape]
        if self.perm is None:
            return shape
        return [shape[i] for i in np.argsort(self.perm)]


@dataclass
class Node:
    """One ONNX node as a lowering sees it."""

    op_type: str
    name: str
    inputs: list[Value | None]
    attrs: dict[str, Any]
    output_names: list[str]
    opset: int
    extra: dict[str, Any] = field(default_factory=dict)

    def input(self, index: int) -> Value | None:
        return self.inputs[index] if index < len(self.inputs) else None

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def unsupported(self, detail: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(self.op_type, self.name, detail, supported=LOWERINGS)

    def constant_input(self, index: int, what: str) -> np.ndarray | None:
        """An optional input that must be a constant (shape, axes, pads...); None when absent."""
        value = self.input(index)
        if value is None:
            return None
        if not value.is_constant:
            raise self.unsupported(f"input {index} ({what}) must be a constant after folding, but it is computed")
        return value.data


Lowering = Callable[[Node], "Value | Sequence[Value]"]
LOWERINGS: dict[str, Lowering] = {}


def register(*op_types: str) -> Callable[[Lowering], Lowering]:
    """Register a lowering for one or more ONNX op types (default domain)."""

    def decorate(fn: Lowering) -> Lowering:
        for op_type in op_types:
            if op_type in LOWERINGS:
                raise ValueError(f"op type {op_type} registered twice")
            LOWERINGS[op_type] = fn
        return fn

    return decorate
