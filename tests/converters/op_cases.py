"""Builders for the one-op (or few-op) graphs the op tests convert: one case per behaviour worth checking."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from tests.converters.conftest import make_model

IMAGE = [1, 3, 8, 8]
INT_MAX = np.iinfo(np.int64).max
_rng = np.random.default_rng(1)


def weights(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@dataclass
class Case:
    model: onnx.ModelProto
    expect: tuple[str, ...] = ()  # TFLite builtin ops that must be in the file.
    positive: bool = False  # Feed positive inputs (Sqrt, Pow with a fractional exponent).
    label: str = field(default="")


def one(op, inputs=("x",), constants=None, shape=IMAGE, expect=(), opset=17, outputs=1, positive=False, **attrs):
    """A graph of a single ``op`` node; inputs not in ``constants`` are fed, all with ``shape``."""
    constants = constants or {}
    out_names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, list(inputs), out_names, name=f"{op.lower()}_node", **attrs)
    fed = {name: shape for name in inputs if name and name not in constants}
    label = f"{op}:{','.join(f'{k}={v}' for k, v in attrs.items())}"
    return Case(make_model([node], fed, out_names, constants, opset), tuple(expect), positive, label)


def unary(op, expect, **kw):
    return [one(op, expect=(expect,) if expect else (), **kw)]


def binary(op, expect):
    # x (NHWC inside) op a per-channel constant, and x op another fed tensor of the same shape.
    return [
        one(op, ("x", "c"), {"c": weights(3, 1, 1)}, expect=(expect,) if expect else ()),
        one(op, ("x", "z"), expect=(expect,) if expect else ()),
    ]


def resize_2x(expect=(), **attrs):
    return one("Resize", ("x", "", "s"), {"s": np.array([1, 1, 2, 2], np.float32)}, expect=expect, **attrs)


def chain(nodes, constants=None, shape=IMAGE, expect=(), opset=17):
    return Case(make_model(nodes, {"x": shape}, ["y0"], constants, opset), tuple(expect))
