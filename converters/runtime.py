"""Run artifacts in their own runtime (onnxruntime, LiteRT): used by verification, evaluation and inspect.

Sessions feed and fetch by the ONNX names; for a .tflite those are its signature keys (edgepack's metadata
maps keys TF had to sanitize back to ONNX names). Importing this module never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edgepack.converters.tflite_graph import is_tflite, missing_custom_op_message, read_tflite_graph
from edgepack.converters.tflite_metadata import read_io_metadata, tflite_precision

from edgepack.core.artifacts import Quantization, TensorSpec
from edgepack.core.errors import ModelFileError
from edgepack.core.interpreters import tflite_interpreter

_ORT_DTYPES = {
    "float": "float32", "double": "float64", "float16": "float16", "int64": "int64", "int32": "int32",
    "int16": "int16", "int8": "int8", "uint8": "uint8", "uint16": "uint16", "bool": "bool",
}  # fmt: skip
_SUFFIXES = {".onnx": "OnnxSession", ".tflite": "TFLiteSession"}


def load_tflite_interpreter(model_path, num_threads: int | None = None, *, default_delegates: bool = True):
    """(Interpreter, runtime name, version) for a .tflite file, from the first TFLite runtime installed.

    ``default_delegates=False`` keeps XNNPACK out so the op list shows the model's own builtin ops.
    """
    return tflite_interpreter(model_path=str(model_path), num_threads=num_threads, default_delegates=default_delegates)


def count_tflite_ops(model_path) -> dict[str, int]:
    """TFLite builtin op name -> count, read without delegates (with XNNPACK most ops read 'DELEGATE')."""
    interpreter, _, _ = load_tflite_interpreter(model_path, default_delegates=False)
    interpreter.allocate_tensors()
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


class OnnxSession:
    """An ONNX model in onnxruntime, fed and fetched by ONNX names."""

    runtime = "onnxruntime"

    def __init__(self, path, num_threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelFileError(f"onnxruntime cannot load {str(path)!r}: {e}") from e
        self.version = ort.__version__
        self.inputs = [ort_spec(node) for node in self._session.get_inputs()]
        self.outputs = [ort_spec(node) for node in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(None, feeds)
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}


def ort_spec(node) -> TensorSpec:
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in node.shape]
    dtype = _ORT_DTYPES.get(node.type.removeprefix("tensor(").removesuffix(")"), node.type)
    return TensorSpec(name=node.name, shape=shape, dtype=dtype, layout="NCHW" if len(shape) == 4 else None)


class TFLiteSession:
    """A .tflite model in LiteRT, fed and fetched by signature keys (the ONNX names for edgepack's files)."""

    def __init__(self, path, num_threads: int | None = None):
        try:
            inputs, outputs = self._open(path, num_threads)
        except (ValueError, RuntimeError) as e:
            reason = missing_custom_op_message(e, "the installed LiteRT") or str(e)
            raise ModelFileError(f"LiteRT cannot load {str(path)!r}: {reason}") from e
        record = read_io_metadata(Path(path).read_bytes()) or {}
        self.inputs = specs_in_model_order(inputs, record.get("inputs", []))
        self.outputs = specs_in_model_order(outputs, record.get("outputs", []))

    def _open(self, path, num_threads: int | None) -> tuple[dict[str, dict], dict[str, dict]]:
        self.interpreter, self.runtime, self.version = load_tflite_interpreter(path, num_threads)
        self.interpreter.allocate_tensors()  # now, not at the first run: a kernel the runtime lacks fails here
        signatures = self.interpreter.get_signature_list()
        if signatures:
            self._runner = self.interpreter.get_signature_runner(next(iter(signatures)))
            return self._runner.get_input_details(), self._runner.get_output_details()
        self._runner = None  # No signature: fall back to the interpreter's tensor names.
        inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        return inputs, {d["name"]: d for d in self.interpreter.get_output_details()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keyed = {spec.tensor_name or spec.name: feeds[spec.name] for spec in self.inputs}
        results = self._runner(**keyed) if self._runner else self._run_by_tensor_names(keyed)
        return {spec.name: results[spec.tensor_name or spec.name] for spec in self.outputs}

    def _run_by_tensor_names(self, keyed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for detail in self.interpreter.get_input_details():
            self.interpreter.set_tensor(detail["index"], keyed[detail["name"]])
        self.interpreter.invoke()
        return {d["name"]: self.interpreter.get_tensor(d["index"]) for d in self.interpreter.get_output_details()}


def specs_in_model_order(details: dict[str, dict], recorded: list[dict]) -> list[TensorSpec]:
    """TensorSpecs for LiteRT's tensors (which it lists by sorted signature key) in the ONNX model's order."""
    known = {spec["tensor_name"] or spec["name"]: (index, spec) for index, spec in enumerate(recorded)}
    ordered = sorted(details, key=lambda key: known.get(key, (len(known), None))[0])
    return [tflite_spec(key, details[key], known.get(key, (0, None))[1]) for key in ordered]


def tflite_spec(key: str, detail: dict, recorded: dict | None) -> TensorSpec:
    """A TensorSpec from LiteRT's tensor details, with the ONNX name and layout edgepack recorded, if any."""
    recorded = recorded or {}
    return TensorSpec(
        name=recorded.get("name", key),
        shape=[int(d) for d in detail["shape"]],
        dtype=np.dtype(detail["dtype"]).name,
        layout=recorded.get("layout"),
        perm_from_onnx=recorded.get("perm_from_onnx"),
        quantization=tflite_quantization(detail.get("quantization_parameters", {})),
        tensor_name=None if recorded.get("name", key) == key else key,
    )


def tflite_quantization(params: dict) -> Quantization | None:
    scales = params.get("scales")
    if scales is None or len(scales) == 0:
        return None
    axis = params.get("quantized_dimension", 0) if len(scales) > 1 else None
    return Quantization(scale=[float(s) for s in scales], zero_point=[int(z) for z in params["zero_points"]], axis=axis)


@dataclass
class TFLiteDescription:
    """A .tflite file as a model source: what to feed and fetch, what it is made of, its precision."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: dict[str, int]
    precision: str  # fp32, fp16, dynamic_int8, int8 or int16x8
    written_by_edgepack: bool  # It carries edgepack's metadata (ONNX names and layouts).
    custom_ops: list[str] = field(default_factory=list)  # ops a runtime must register to run the file


def describe_tflite(path) -> TFLiteDescription:
    """Inspect any .tflite file (edgepack's or another tool's) from its flatbuffer, without TensorFlow and without an
    interpreter: a file whose custom ops this runtime lacks is still described (converters/tflite_graph.py)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"TFLite file {str(path)!r} does not exist")
    data = path.read_bytes()
    if not is_tflite(data):
        raise ModelFileError(f"{str(path)!r} is not a TFLite file (no TFL3 flatbuffer identifier)")
    try:
        graph, record = read_tflite_graph(data), read_io_metadata(data) or {}
    except Exception as e:  # a damaged flatbuffer fails in the generated reader's own ways
        raise ModelFileError(f"{str(path)!r} is not a readable TFLite file: {e}") from e
    return TFLiteDescription(
        inputs=specs_in_model_order(graph.inputs, record.get("inputs", [])),
        outputs=specs_in_model_order(graph.outputs, record.get("outputs", [])),
        op_counts=graph.op_counts,
        precision=tflite_precision(data),
        written_by_edgepack=bool(record),
        custom_ops=graph.custom_ops,
    )


def open_session(path, num_threads: int | None = None) -> OnnxSession | TFLiteSession:
    """A session for an .onnx or .tflite file, chosen by suffix."""
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise ModelFileError(
            f"cannot run {str(path)!r}: unknown model suffix {path.suffix!r}; accepted: .onnx, .tflite"
        )
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    return OnnxSession(path, num_threads) if path.suffix == ".onnx" else TFLiteSession(path, num_threads)
