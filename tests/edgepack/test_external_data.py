"""An ONNX file whose weights sit in a sidecar (`model.onnx.data`, what torch's dynamo exporter and large-model tools
write): edgepack reads the weights from beside the file, keeps them in the run's copy, and keys its cache on their
content as well as the graph's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepack.convert_file import convert_file
from edgepack.recipe import parse_recipe
from edgepack.running.pipeline import pack


def save_with_external_weights(path: Path, weight: np.ndarray) -> Path:
    """x[1, 8] -> Gemm(W[4, 8], b) -> Relu -> y[1, 4], every initializer in one sidecar file."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.full(4, 0.5, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=0)  # fmt: skip
    return path


def test_a_model_with_external_weights_converts_and_verifies(tmp_path):
    source = save_with_external_weights(tmp_path / "model.onnx", np.eye(4, 8, dtype=np.float32))
    assert (tmp_path / "model.onnx.data").is_file()
    result = convert_file(source, to="tflite", out=tmp_path / "model.tflite", input_shapes=[])
    assert result["max_abs_error"] <= result["tolerance"], result


def test_weights_changed_in_the_sidecar_only_are_measured_again(tmp_path):
    source = save_with_external_weights(tmp_path / "model.onnx", np.eye(4, 8, dtype=np.float32))
    recipe = parse_recipe({"name": "ext", "model": {"path": str(source), "inputs": [{"name": "x", "shape": [1, 8]}]},
                           "task": "other", "stages": [{"stage": "convert", "to": ["tflite"]}], "robustness": None,
                           "bench": None})  # fmt: skip
    first = pack(recipe, out=tmp_path / "run", quiet=True)
    sidecar = tmp_path / "model.onnx.data"
    sidecar.write_bytes((2 * np.frombuffer(sidecar.read_bytes(), np.float32)).tobytes())  # model.onnx unchanged
    again = pack(recipe, out=tmp_path / "run", quiet=True)
    assert not any(step["cached"] for step in again.results["steps"] if step["name"] == "convert"), again.results
    hashes = [{a["name"]: a["sha256"] for a in result.artifacts} for result in (first, again)]
    assert hashes[0]["onnx-fp32"] != hashes[1]["onnx-fp32"] and hashes[0]["tflite-fp32"] != hashes[1]["tflite-fp32"]
