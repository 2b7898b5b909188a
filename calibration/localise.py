"""Per-layer error localisation: which layer of a quantized model loses the signal, measured in the runtime.

The float ONNX model and the quantized artifact run on the same samples with every quantized activation exposed,
and each tensor gets SQNR = 10 log10(sum float^2 / sum (float - quantized)^2) over all samples. Only two running
sums per tensor are kept, never the activations, so memory stays flat as the sample count grows. Errors add up
along the graph: a layer's figure includes what its inputs brought, so the first layer that drops is the culprit.

In the QDQ file the quantized value of tensor T is what the next layer reads: the DequantizeLinear output.

LiteRT keeps intermediate tensors only with ``experimental_preserve_all_tensors`` and without the XNNPACK delegate
(a delegated subgraph never writes its tensors back), so TFLite figures come from LiteRT's builtin kernels. TFLite
tensors carry TF's names, not ONNX's: one is matched to an edgepack activation when its scale, zero point and
(NHWC) shape equal that activation's; when two TFLite tensors would match, the activation is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from edgepack.calibration.collect import onnx_tensor_reader, padded_batches

from edgepack.core.artifacts import TensorSpec
from edgepack.core.dataset import ArrayDataset, real_rows
from edgepack.core.errors import ModelFileError
from edgepack.core.results_format import LayerSqnr

# No error at all (or a float tensor that is all zeros) has no finite SQNR; results.json must stay valid JSON.
SQNR_LIMIT_DB = 300.0
NCHW_TO_NHWC = (0, 2, 3, 1)

Grid = tuple[float, int]  # (scale, zero point) of a per-tensor activation


@dataclass
class SqnrSums:
    """Signal and error power of one tensor, summed over batches."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, reference: np.ndarray, measured: np.ndarray) -> None:
        reference = reference.astype(np.float64)
        self.signal += float(np.sum(reference**2))
        self.noise += float(np.sum((reference - measured.astype(np.float64)) ** 2))

    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return SQNR_LIMIT_DB
        if self.signal == 0.0:
            return -SQNR_LIMIT_DB
        return float(np.clip(10.0 * np.log10(self.signal / self.noise), -SQNR_LIMIT_DB, SQNR_LIMIT_DB))


def onnx_layer_sqnr(float_model: onnx.ModelProto, quantized_model: onnx.ModelProto, tensors: list[str],
                    dataset: ArrayDataset, batch_size: int) -> list[LayerSqnr]:  # fmt: skip
    """One entry per tensor of ``tensors`` (float-graph names), in graph order, measured in onnxruntime."""
    read_name = {t: dequantized_name(quantized_model.graph, t) for t in tensors}
    read_float = onnx_tensor_reader(float_model, tensors)
    read_quantized = onnx_tensor_reader(quantized_model, list(read_name.values()))
    sums = {t: SqnrSums() for t in tensors}
    for batch, count in padded_batches(dataset, batch_size):
        reference, measured = read_float(batch), read_quantized(batch)
        for tensor in tensors:
            reference_rows, measured_rows = reference[tensor], measured[read_name[tensor]]
            sums[tensor].add(real_rows(reference_rows, count, batch_size), real_rows(measured_rows, count, batch_size))
    return onnx_layers(float_model.graph, {t: s.sqnr_db() for t, s in sums.items()})


def dequantized_name(graph: onnx.GraphProto, tensor: str) -> str:
    """The name consumers of ``tensor`` read in a QDQ graph: ``tensor`` itself, except for a graph input, whose
    consumers read ``tensor``_dequantized (converters.qdq names it so)."""
    return tensor if all(i.name != tensor for i in graph.input) else f"{tensor}_dequantized"


def onnx_layers(graph: onnx.GraphProto, sqnr: dict[str, float]) -> list[LayerSqnr]:
    """Each tensor's figure under the node that produces it (a graph input is its own layer, with no op)."""
    producers = {out: (position, node) for position, node in enumerate(graph.node) for out in node.output}
    entries = []
    for tensor, value in sqnr.items():
        position, node = producers.get(tensor, (-1, None))
        layer = (node.name or tensor) if node is not None else tensor
        entries.append((position, LayerSqnr(layer=layer, op=node.op_type if node else None, sqnr_db=value)))
    return [entry for _, entry in sorted(entries, key=lambda e: e[0])]


def tflite_layer_sqnr(float_model: onnx.ModelProto, tflite_path, grids: dict[str, Grid], input_specs: list[TensorSpec],
                      dataset: ArrayDataset, batch_size: int) -> list[LayerSqnr]:  # fmt: skip
    """One entry per edgepack activation found in the .tflite (see the module note), named by TFLite tensor and op.

    ``grids``: edgepack's (scale, signed zero point) of every quantized activation, by float-graph name;
    ``input_specs``: the artifact's inputs (layout and integer I/O)."""
    read_float = onnx_tensor_reader(float_model, list(grids))
    interpreter = _interpreter_keeping_all_tensors(tflite_path)
    matches: dict[str, dict] | None = None
    sums: dict[str, SqnrSums] = {}
    for batch, count in padded_batches(dataset, batch_size):
        reference = read_float(batch)
        if matches is None:
            matches = match_tflite_tensors(interpreter, grids, {t: v.shape for t, v in reference.items()})
            sums = {t: SqnrSums() for t in matches}
        measured = _run_tflite(interpreter, batch, input_specs, matches)
        for tensor, value in measured.items():
            sums[tensor].add(real_rows(reference[tensor], count, batch_size), real_rows(value, count, batch_size))
    return _tflite_layers(interpreter, matches or {}, sums)


def _interpreter_keeping_all_tensors(path):
    module = _tflite_interpreter_module()
    no_xnnpack = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = module.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                     experimental_op_resolver_type=no_xnnpack)  # fmt: skip
    interpreter.allocate_tensors()
    return interpreter


def _tflite_interpreter_module():
    """The first TFLite runtime installed, in converters.runtime's order of preference."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite"):
        try:
            return __import__(name, fromlist=["Interpreter"])
        except ImportError:
            continue
    raise ModelFileError("no TFLite runtime found; install ai-edge-litert, tflite-runtime or tensorflow")


def match_tflite_tensors(interpreter, grids: dict[str, Grid], onnx_shapes: dict[str, tuple]) -> dict[str, dict]:
    """Activation name -> the one TFLite tensor detail with its scale, zero point and NHWC shape."""
    details = [d for d in interpreter.get_tensor_details() if len(d["quantization_parameters"]["scales"]) == 1]
    matches = {}
    for tensor, grid in grids.items():
        found = [d for d in details if _same_grid(d, grid) and tuple(d["shape"]) == _nhwc(onnx_shapes[tensor])]
        if len(found) == 1:
            matches[tensor] = found[0]
    return matches


def _same_grid(detail: dict, grid: Grid) -> bool:
    quantization, (scale, zero_point) = detail["quantization_parameters"], grid
    same_scale = np.isclose(quantization["scales"][0], scale, rtol=1e-6, atol=0.0)  # float32 in the file
    return bool(same_scale) and int(quantization["zero_points"][0]) == zero_point


def _nhwc(shape: tuple) -> tuple:
    return tuple(shape[axis] for axis in NCHW_TO_NHWC) if len(shape) == 4 else tuple(shape)


def _run_tflite(interpreter, batch: dict[str, np.ndarray], input_specs: list[TensorSpec],
                matches: dict[str, dict]) -> dict[str, np.ndarray]:  # fmt: skip
    """Real values (ONNX layout) of every matched tensor after one invocation on ``batch``."""
    from edgepack.converters.verify import to_runtime

    interpreter.get_signature_runner()(**{spec.name: to_runtime(batch[spec.name], spec) for spec in input_specs})
    return {tensor: _dequantized_onnx_layout(interpreter, detail) for tensor, detail in matches.items()}


def _dequantized_onnx_layout(interpreter, detail: dict) -> np.ndarray:
    quantization = detail["quantization_parameters"]
    q = interpreter.get_tensor(detail["index"]).astype(np.float64)
    real = (q - quantization["zero_points"][0]) * quantization["scales"][0]
    return np.transpose(real, np.argsort(NCHW_TO_NHWC)) if real.ndim == 4 else real


def _tflite_layers(interpreter, matches: dict[str, dict], sums: dict[str, SqnrSums]) -> list[LayerSqnr]:
    """In the order of the TFLite tensors, each under the op that writes it (QUANTIZE for the float input's)."""
    # _get_ops_details is private, but it is the interpreter's only way to say which op writes which tensor.
    writers = {int(out): op["op_name"] for op in interpreter._get_ops_details() for out in op["outputs"]}
    ordered = sorted(matches.items(), key=lambda item: item[1]["index"])
    return [LayerSqnr(layer=d["name"], op=writers.get(d["index"]), sqnr_db=sums[t].sqnr_db()) for t, d in ordered]
