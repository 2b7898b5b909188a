"""Bad input: the exact error class, a message naming the culprit, and no half-written artifact left behind."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.core.errors import DataError, ModelFileError, RecipeError, UnsupportedOperatorError, VerificationError
from edgepack.recipe import parse_recipe
from edgepack.running.pipeline import pack
from tests.edgepack.helpers import image_recipe


def run(recipe: dict, tmp_path):
    return pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)


def test_missing_model_file_is_named(tmp_path):
    recipe = {"model": {"path": str(tmp_path / "gone.onnx"), "inputs": [{"name": "x", "shape": [1, 4]}]}}
    with pytest.raises(ModelFileError, match=r"gone\.onnx does not exist"):
        run(recipe, tmp_path)


@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".ts", ".tflite"])
def test_a_text_file_posing_as_a_model_is_named(tmp_path, suffix):
    fake = tmp_path / f"notes{suffix}"
    fake.write_text("not a model")
    recipe = {"model": {"path": str(fake), "inputs": [{"name": "x", "shape": [1, 4]}]}}
    with pytest.raises(ModelFileError, match=f"notes\\{suffix}"):
        run(recipe, tmp_path)


def test_a_text_file_posing_as_weights_is_named(tmp_path):
    fake = tmp_path / "weights.pt"
    fake.write_text("not a state dict")
    with pytest.raises(ModelFileError, match="weights.pt is not a torch state_dict"):
        run(image_recipe("mlp", fake), tmp_path)


def test_weights_of_another_model_are_refused(tmp_path, trained_weights):
    with pytest.raises(ModelFileError, match="mlp.pt does not fit the factory's module: size mismatch for 1.weight"):
        run(image_recipe("conv_net", trained_weights("mlp")), tmp_path)


def test_factory_that_cannot_be_imported(tmp_path, trained_weights):
    recipe = image_recipe("mlp", trained_weights("mlp"))
    recipe["model"]["factory"] = "tests.no_such_module:mlp"
    with pytest.raises(RecipeError, match="module 'tests.no_such_module' cannot be imported"):
        run(recipe, tmp_path)


def test_wrong_input_shape_against_the_data_names_the_input(tmp_path, trained_weights):
    recipe = image_recipe("conv_net", trained_weights("conv_net"))
    recipe["model"]["inputs"][0]["shape"] = [1, 3, 8, 8]
    with pytest.raises(DataError, match=r"input 'image' samples have shape \[1, 8, 8\], the model expects \[3, 8, 8\]"):
        run(recipe, tmp_path)


def test_wrong_input_shape_against_the_model_names_the_shapes(tmp_path, trained_weights):
    recipe = image_recipe("conv_net", trained_weights("conv_net")) | {"data": None}
    recipe["model"]["inputs"][0]["shape"] = [1, 3, 8, 8]
    with pytest.raises(RecipeError, match=r"the model rejected inputs of shapes \{'image': \[32, 3, 8, 8\]\}"):
        run(recipe, tmp_path)


def test_npz_without_the_input_and_with_nan(tmp_path, trained_weights):
    npz = tmp_path / "data.npz"
    np.savez(npz, pixels=np.zeros((4, 1, 8, 8), np.float32))
    recipe = image_recipe("mlp", trained_weights("mlp")) | {"data": {"source": "npz", "path": str(npz)}}
    with pytest.raises(DataError, match=r"no array for input\(s\) \['image'\]; it holds \['pixels'\]"):
        run(recipe, tmp_path)
    np.savez(npz, image=np.full((4, 1, 8, 8), np.nan, np.float32))
    with pytest.raises(DataError, match="input 'image' contains NaN or Inf"):
        run(recipe, tmp_path)


def test_unsupported_operator_names_node_and_op_and_leaves_no_tflite(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Det", ["x"], ["y"], name="determinant_1")
    graph = helper.make_graph([node], "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    recipe = {"name": "det", "bench": None, "model": {"path": str(path), "inputs": [{"name": "x", "shape": [1, 3, 3]}],
                                                       "output_names": ["y"]}}  # fmt: skip
    with pytest.raises(UnsupportedOperatorError, match="'determinant_1' \\(op Det\\)"):
        run(recipe, tmp_path)
    assert not list((tmp_path / "run").rglob("*.tflite"))


def test_artifact_outside_tolerance_fails_the_run_with_the_measured_error(tmp_path, trained_weights):
    recipe = image_recipe("mlp", trained_weights("mlp")) | {"verify": {"float_tolerance": 1e-12}}
    with pytest.raises(VerificationError) as caught:
        run(recipe, tmp_path)
    error = caught.value
    assert error.artifact == "onnx-fp32" and error.measured > error.tolerance > 0
    assert "exceeds the tolerance" in str(error) and "onnxruntime" in str(error)
    assert not list((tmp_path / "run" / "artifacts").glob("*.onnx"))  # not recorded, not left behind
