"""Preparation before lowering: static input shapes, shape inference, constant folding (with If nodes whose
condition folds inlined) and pattern fusion.

After this pass every shape, axis, pad and scale a lowering needs is a numpy constant, so the lowerings never
see the Shape -> Gather -> Concat -> Reshape chains exporters emit for dynamic batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from edgepack.converters.onnx_to_tf.control_flow import inline_constant_ifs, reject_computed_ifs
from edgepack.converters.onnx_to_tf.fuse import fuse_gelu
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from edgepack.core.errors import ModelFileError

# Ops whose result is not a pure function of their inputs, and ops whose subgraphs may read values from the
# enclosing graph (an If with a constant condition is inlined instead): never folded.
_NOT_FOLDABLE = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "If", "Loop", "Scan",
}  # fmt: skip
_MAX_FOLD_ROUNDS = 5
# Constants up to this many elements stay in the protobuf shape inference reads; larger ones become stubs.
_INLINE_ELEMENTS = 4096


@dataclass
class PreparedModel:
    """The graph to lower: static input shapes, constants as numpy, only non-constant nodes left."""

    graph: onnx.GraphProto
    constants: dict[str, np.ndarray]
    opset: int
    input_shapes: dict[str, list[int]]


def prepare_model(onnx_path: Path, input_shapes: dict[str, list[int]] | None = None, *,
                  fuse: bool = True) -> PreparedModel:  # fmt: skip
    """``fuse=False`` keeps GELU written out (16x8: TFLite's GELU has no 16-bit kernel, its parts do)."""
    model = load_onnx_model(onnx_path)
    constants = load_initializers(model, Path(onnx_path))
    shapes = fix_input_shapes(model, constants, input_shapes or {}, onnx_path)
    opset = default_opset(model)
    for _ in range(_MAX_FOLD_ROUNDS):
        model = infer_shapes(model, onnx_path)
        folded = fold_constants(model.graph, constants, opset)
        if not inline_constant_ifs(model.graph, constants) and not folded:
            break
    reject_computed_ifs(model.graph)
    if fuse:
        fuse_gelu(model.graph, constants)
    return PreparedModel(model.graph, constants, opset, shapes)


def load_onnx_model(onnx_path: Path) -> onnx.ModelProto:
    """The model without its weights' data: the checker reads the file by path, so external data (and models
    past protobuf's 2 GB limit) are checked without ever being serialized into one message."""
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {str(path)!r} does not exist; pass the path of a .onnx model")
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelFileError(f"{str(path)!r} is not a valid ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.output:
        raise ModelFileError(f"{str(path)!r} is not a valid ONNX model: its graph has no outputs")
    return model


def load_initializers(model: onnx.ModelProto, onnx_path: Path) -> dict[str, np.ndarray]:
    """Every initializer as numpy (external data read from beside the model); large ones left in the graph as
    data-less stubs, which is all shape inference needs."""
    try:
        constants = {t.name: numpy_helper.to_array(t, str(onnx_path.parent)) for t in model.graph.initializer}
    except (OSError, ValueError) as e:
        raise ModelFileError(f"cannot read the weights of {str(onnx_path)!r}: {e}") from e
    replace_initializers(model.graph, constants)
    return constants


def graph_tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    """The tensor itself when small (shape inference may read shapes, axes, scales), else a stub: dims and type
    only, marked external so no reader looks for data in the message."""
    value = np.asarray(value)
    if value.size <= _INLINE_ELEMENTS:
        return numpy_helper.from_array(value, name)
    stub = onnx.TensorProto(name=name, dims=value.shape, data_location=onnx.TensorProto.EXTERNAL)
    stub.data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    stub.external_data.add(key="location", value="edgepack-weights-held-in-memory")
    return stub


def replace_initializers(graph: onnx.GraphProto, constants: dict[str, np.ndarray]) -> None:
    del graph.initializer[:]
    graph.initializer.extend(graph_tensor(name, value) for name, value in constants.items())


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def real_inputs(graph: onnx.GraphProto, constants: dict[str, np.ndarray]) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (old exporters also list initializers as inputs)."""
    return [inp for inp in graph.input if inp.name not in constants]


def fix_input_shapes(
    model: onnx.ModelProto, constants: dict, overrides: dict[str, list[int]], onnx_path: Path
) -> dict[str, list[int]]:
    """Make every input shape static in place: overrides first, dynamic batch -> 1, anything else an error."""
    inputs = real_inputs(model.graph, constants)
    unknown = sorted(set(overrides) - {inp.name for inp in inputs})
    if unknown:
        names = ", ".join(inp.name for inp in inputs)
        raise ModelFileError(f"--input-shape names {unknown} are not inputs of {str(onnx_path)!r}; inputs: {names}")
    shapes = {}
    for inp in inputs:
        shapes[inp.name] = static_shape(inp, overrides.get(inp.name), onnx_path)
        dims = inp.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[inp.name]:
            dims.add().dim_value = size
    return shapes


def static_shape(inp: onnx.ValueInfoProto, override: list[int] | None, onnx_path: Path) -> list[int]:
    dims = list(inp.type.tensor_type.shape.dim)
    if override is not None:
        if len(override) != len(dims) or any(int(d) <= 0 for d in override):
            raise ModelFileError(
                f"input {inp.name!r} of {str(onnx_path)!r} has rank {len(dims)}; the shape given "
                f"{list(override)} must have {len(dims)} positive sizes"
            )
        return [int(d) for d in override]
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]
    if shape and shape[0] == -1:
        shape[0] = 1  # A dynamic batch runs as batch 1 on a device.
    if -1 in shape:
        example = "x".join(str(s) if s > 0 else "N" for s in shape)
        raise ModelFileError(
            f"input {inp.name!r} of {str(onnx_path)!r} has dynamic dimensions ({example}) besides the batch; "
            f"TFLite needs static shapes: pass --input-shape {inp.name}={example.replace('N', '<size>')}"
        )
    return shape


def infer_shapes(model: onnx.ModelProto, onnx_path: Path) -> onnx.ModelProto:
    """Shapes inferred afresh: onnx keeps a value_info it finds (a symbolic ``unk__0`` from before a fold, or the
    exporter's ``batch``) over what it can now infer, and one stale dim hides every shape downstream of it."""
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:
        raise ModelFileError(f"shape inference failed on {str(onnx_path)!r}: {e}") from e


def known_static_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[info.name] = dims
    return shapes


def fold_constants(graph: onnx.GraphProto, constants: dict[str, np.ndarray], opset: int) -> bool:
    """Evaluate every node whose inputs are all constant; rewrite the graph in place. True if any folded."""
    shapes = known_static_shapes(graph)
    kept = []
    for node in graph.node:
        values = fold_node(node, constants, shapes, opset)
        if values is None:
            kept.append(node)
            continue
        constants.update({name: value for name, value in zip(node.output, values, strict=False) if name})
    folded = len(kept) != len(graph.node)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        replace_initializers(graph, constants)
    return folded


def fold_node(node: onnx.NodeProto, constants: dict, shapes: dict, opset: int) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in _NOT_FOLDABLE:
        return None
    if node.op_type == "Shape" and node.input[0] in shapes:
        return [shape_of(node, shapes[node.input[0]])]
    if not all(name == "" or name in constants for name in node.input):
        return None
    return evaluate_node(node, {name: constants[name] for name in node.input if name}, opset)


def evaluate_node(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """Run one node in onnx's reference evaluator at the model's opset (a bare NodeProto would run at the
    newest opset, where e.g. Unsqueeze takes its axes as an input, not an attribute)."""
    empty = onnx.helper.make_empty_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "fold", [empty(name) for name in node.input if name], [empty(name) for name in node.output if name]
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return list(ReferenceEvaluator(model).run(None, feeds))


def shape_of(node: onnx.NodeProto, shape: list[int]) -> np.ndarray:
    """Shape's result for a static input, honouring the start/end attributes (opset 15)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)
