"""Where the ONNX and TFLite integer files of one calibration part: each quantized activation's integers in both
runtimes, on the same samples, in steps of that tensor's own grid.

onnxruntime: the QDQ file with every activation's QuantizeLinear output (its integers) exposed as a graph output;
an exposed integer tensor leaves onnxruntime's fusions (QLinearConv, QLinearAdd, ...) as they are, so these are the
values the file computes. LiteRT: the .tflite rewritten so that every integer tensor an op writes is also a subgraph
output, run with the default delegate (XNNPACK writes its outputs back), so these are the values of the kernels that
run in deployment; calibration/localise.py reads intermediates without XNNPACK instead, whose reference kernels
round differently. TFLite tensors carry TF's names: an activation is matched to the tensor with its grid and (NHWC)
shape, and among several such, to the one whose values on the first batch are closest.

One differing integer early in a deep net reaches many values after it, so the first tensor that differs and the
op that writes it say which kernel rounds differently; later figures mostly carry what came before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from edgepack.calibration.collect import ort_feeds, padded_batches
from onnx import helper, numpy_helper

from edgepack.core.artifacts import TensorSpec
from edgepack.core.dataset import ArrayDataset, real_rows
from edgepack.core.quantization import QuantParams

NCHW_TO_NHWC = (0, 2, 3, 1)
WORST_LAYERS = 5


@dataclass
class LayerAgreement:
    """One activation: how often its integers are equal, or within one step, in the two files."""

    tensor: str  # the float graph's name
    op: str | None  # the ONNX op writing it (None: a graph input)
    exact: float
    within_one_step: float
    max_steps: int
    values: int = 0


@dataclass
class _Counts:
    exact: int = 0
    within_one: int = 0
    max_steps: int = 0
    values: int = 0

    def add(self, steps: np.ndarray) -> None:
        self.exact += int(np.count_nonzero(steps == 0))
        self.within_one += int(np.count_nonzero(steps <= 1))
        self.max_steps = max(self.max_steps, int(steps.max(initial=0)))
        self.values += steps.size


def layer_agreement(qdq_path: Path, tflite_path: Path, activations: dict[str, QuantParams],
                    input_specs: list[TensorSpec], dataset: ArrayDataset,
                    batch_size: int) -> list[LayerAgreement]:  # fmt: skip
    """Every activation found in both files, in ONNX graph order. ``activations``: edgepack's (signed) grids by
    float-graph name; ``input_specs``: the .tflite's inputs (layout, integer I/O)."""
    qdq = onnx.load(str(qdq_path))
    read_onnx = _onnx_integer_reader(qdq, activations)
    tflite = _TFLiteIntegers(Path(tflite_path).read_bytes(), input_specs)
    matches: dict[str, int] | None = None
    counts: dict[str, _Counts] = {}
    for batch, count in padded_batches(dataset, batch_size):
        onnx_steps, tflite_values = read_onnx(batch), tflite.run(batch)
        if matches is None:
            matches = tflite.match(onnx_steps, activations)
            counts = {t: _Counts() for t in matches}
        for tensor, index in matches.items():
            steps = np.abs(onnx_steps[tensor] - tflite.steps(tflite_values, index))
            counts[tensor].add(real_rows(steps, count, batch_size))
    return _in_graph_order(qdq.graph, counts)


def _onnx_integer_reader(model: onnx.ModelProto, activations: dict[str, QuantParams]):
    """batch -> {tensor: integers minus zero point} from each activation's QuantizeLinear output."""
    import onnxruntime as ort

    quantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    names = {t: f"{t}_quantized" for t in activations if f"{t}_quantized" in quantizers}
    zero_points = {t: initializers[quantizers[q].input[2]] for t, q in names.items()}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    for tensor, name in names.items():
        dtype = helper.np_dtype_to_tensor_dtype(zero_points[tensor].dtype)
        exposed.graph.output.append(helper.make_tensor_value_info(name, dtype, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])

    def read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = session.run(list(names.values()), ort_feeds(session, batch))
        return {t: v.astype(np.int64) - int(zero_points[t]) for t, v in zip(names, values, strict=True)}

    return read


class _TFLiteIntegers:
    """A .tflite whose integer activations are all subgraph outputs, run with LiteRT's default delegates."""

    def __init__(self, tflite_bytes: bytes, input_specs: list[TensorSpec]):
        from edgepack.core.interpreters import tflite_interpreter

        exposed, self.inputs, self.exposed = _exposing_integer_tensors(tflite_bytes)
        self.specs = input_specs
        self.interpreter, _, _ = tflite_interpreter(model_content=exposed)
        self.interpreter.allocate_tensors()
        details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        self.details = {i: details[i] for i in self.exposed}

    def run(self, batch: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        from edgepack.converters.verify import to_runtime

        for spec in self.specs:
            index = self.inputs[spec.tensor_name or spec.name]
            self.interpreter.set_tensor(index, to_runtime(batch[spec.name], spec))
        self.interpreter.invoke()
        return {i: self.interpreter.get_tensor(i) for i in self.exposed}

    def steps(self, values: dict[int, np.ndarray], index: int) -> np.ndarray:
        """Integers minus zero point, in the ONNX layout."""
        zero_point = int(self.details[index]["quantization_parameters"]["zero_points"][0])
        q = values[index].astype(np.int64) - zero_point
        return np.transpose(q, np.argsort(NCHW_TO_NHWC)) if q.ndim == 4 else q

    def match(self, onnx_steps: dict[str, np.ndarray], activations: dict[str, QuantParams]) -> dict[str, int]:
        """Activation -> the TFLite tensor with its grid and shape whose values (last run) are closest."""
        values = {i: self.interpreter.get_tensor(i) for i in self.exposed}
        matches = {}
        for tensor, reference in onnx_steps.items():
            found = [i for i in self.exposed if self._same_grid(i, activations[tensor], reference.shape)]
            if found:
                matches[tensor] = min(found, key=lambda i: np.mean(np.abs(reference - self.steps(values, i))))
        return matches

    def _same_grid(self, index: int, params: QuantParams, onnx_shape: tuple) -> bool:
        detail = self.details[index]
        scales, zero_points = (detail["quantization_parameters"][k] for k in ("scales", "zero_points"))
        shape = tuple(onnx_shape[a] for a in NCHW_TO_NHWC) if len(onnx_shape) == 4 else tuple(onnx_shape)
        if len(scales) != 1 or tuple(detail["shape"]) != shape:
            return False
        return bool(np.isclose(scales[0], float(params.scale), rtol=1e-6)) and zero_points[0] == int(params.zero_point)


def _exposing_integer_tensors(tflite_bytes: bytes) -> tuple[bytes, dict[str, int], list[int]]:
    """(the model with every per-tensor int8/int16 tensor an op writes added to the subgraph outputs, signature
    input key -> tensor index, the exposed indices). Signatures are dropped: they would list only the outputs."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
    subgraph = model.subgraphs[0]
    inputs = {_text(i.name): i.tensorIndex for i in model.signatureDefs[0].inputs} if model.signatureDefs else {}
    inputs = inputs or {_text(subgraph.tensors[i].name): int(i) for i in subgraph.inputs}
    written = {int(i) for op in subgraph.operators for i in op.outputs}
    integer = (schema.TensorType.INT8, schema.TensorType.INT16)
    exposed = [i for i in sorted(written) if subgraph.tensors[i].type in integer and _per_tensor(subgraph.tensors[i])]
    subgraph.outputs = list(dict.fromkeys([int(i) for i in subgraph.outputs] + exposed))
    model.signatureDefs = []
    builder = flatbuffers.Builder(len(tflite_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), inputs, exposed


def _per_tensor(tensor) -> bool:
    quantization = tensor.quantization
    return quantization is not None and quantization.scale is not None and len(quantization.scale) == 1


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _in_graph_order(graph: onnx.GraphProto, counts: dict[str, _Counts]) -> list[LayerAgreement]:
    """A tensor's QuantizeLinear sits right after its producer, so the QDQ graph's node order is the layer order."""
    position = {n.name: index for index, n in enumerate(graph.node) if n.op_type == "QuantizeLinear"}
    producers = {out: node.op_type for node in graph.node for out in node.output}
    layers = []
    for tensor, c in sorted(counts.items(), key=lambda item: position.get(f"{item[0]}_QuantizeLinear", -1)):
        op = producers.get(f"{tensor}_float")
        layers.append(LayerAgreement(tensor, op, c.exact / c.values, c.within_one / c.values, c.max_steps, c.values))
    return layers


def divergence_summary(layers: list[LayerAgreement], graph: onnx.GraphProto, output: str) -> dict:
    """For results.json, over the activations ``output`` depends on (``graph``: the QDQ file's): the first one (graph
    order) whose integers differ between the files, where disagreement starts afresh (the layer differs though
    every quantized input it reads is identical in both files: its kernel rounds differently), and the worst ones."""
    upstream = _upstream(graph, output)
    layers = [layer for layer in layers if layer.tensor in upstream]
    identical = {layer.tensor for layer in layers if layer.exact == 1.0}
    differing = [layer for layer in layers if layer.exact < 1.0]
    inputs = {layer.tensor: _quantized_inputs(graph, layer.tensor, {x.tensor for x in layers}) for layer in differing}
    starts = [layer for layer in differing if inputs[layer.tensor] <= identical]
    worst = sorted(differing, key=lambda layer: (layer.within_one_step, -layer.max_steps, layer.exact))
    return {
        "kernels": "LiteRT with its default delegate (XNNPACK) vs onnxruntime CPU",
        "layers_compared": len(layers),
        "layers_identical": len(identical),
        "first_divergence": _entry(differing[0]) if differing else None,
        "divergence_starts": [_entry(layer) for layer in starts],
        "worst": [_entry(layer) for layer in worst[:WORST_LAYERS]],
    }


def _entry(layer: LayerAgreement) -> dict:
    entry = asdict(layer)
    entry.update(exact=round(layer.exact, 6), within_one_step=round(layer.within_one_step, 6))
    return entry


def _upstream(graph: onnx.GraphProto, output: str) -> set[str]:
    """Every tensor ``output`` depends on (itself included)."""
    producers = {out: node for node in graph.node for out in node.output}
    seen, frontier = {output}, [output]
    while frontier:
        node = producers.get(frontier.pop())
        for name in node.input if node is not None else []:
            if name not in seen:
                seen.add(name)
                frontier.append(name)
    return seen


def _quantized_inputs(graph: onnx.GraphProto, tensor: str, quantized: set[str]) -> set[str]:
    """The activations (of ``quantized``) that the op writing ``tensor`` reads, through Q/DQ pairs and ops that
    keep no grid of their own; a graph input has none."""
    producers = {out: node for node in graph.node for out in node.output}
    found: set[str] = set()
    frontier = list(producers[f"{tensor}_float"].input) if f"{tensor}_float" in producers else []
    while frontier:
        name = frontier.pop()
        if name in quantized:
            found.add(name)
        elif name in producers:
            frontier += list(producers[name].input)
    return found
