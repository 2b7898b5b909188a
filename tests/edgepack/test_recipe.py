"""Recipes: YAML round trip, defaults, overrides, and one clear error for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgepack.core.errors import RecipeError
from edgepack.examples.digits import RECIPE
from edgepack.recipe import apply_override, load_recipe, parse_recipe, recipe_to_yaml


def minimal() -> dict:
    return {"model": {"factory": "tests.models:mlp", "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}]}}


def test_bundled_recipe_round_trips_through_yaml():
    recipe = load_recipe(RECIPE)
    again = parse_recipe(yaml.safe_load(recipe_to_yaml(recipe)))
    assert again == recipe
    assert [s.stage for s in again.stages] == ["export", "convert", "quantize"]
    assert again.stages[2].precision == "int8" and again.stages[2].method == "auto"  # the default (issue 14)
    assert again.bench.runs == 200 and again.model.inputs[0].shape == [1, 1, 8, 8]


def test_defaults_fill_a_minimal_recipe():
    recipe = parse_recipe(minimal())
    assert [s.stage for s in recipe.stages] == ["export", "convert"]
    assert recipe.stages[0].opset == 18 and recipe.stages[0].exporter == "dynamo"
    assert recipe.targets == ["host"] and recipe.verify.float_tolerance == 1e-4
    assert recipe.model.format == "torch"


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path):
    data = minimal()
    data["model"]["weights"] = "w.pt"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    assert load_recipe(tmp_path / "r.yaml").model.weights == tmp_path / "w.pt"


def test_relative_ssh_files_resolve_against_the_recipe_folder_and_home_expands(tmp_path):
    data = minimal() | {"bench": {"ssh_identity_file": "keys/pi", "ssh_known_hosts": "~/.ssh/known_hosts"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    bench = load_recipe(tmp_path / "r.yaml").bench
    assert bench.ssh_identity_file == tmp_path / "keys" / "pi"
    assert bench.ssh_known_hosts == Path.home() / ".ssh" / "known_hosts"


def test_overrides_set_nested_keys_and_list_items():
    data = minimal() | {"stages": [{"stage": "export"}]}
    apply_override(data, "bench.runs=20")
    apply_override(data, "stages.0.opset=17")
    apply_override(data, "model.inputs.0.shape=[1, 1, 4, 4]")
    recipe = parse_recipe(data)
    assert recipe.bench.runs == 20 and recipe.stages[0].opset == 17 and recipe.model.inputs[0].shape == [1, 1, 4, 4]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(modle={}), ["unknown key 'modle'", "did you mean 'model'", "allowed here: name, model"]),
        (lambda d: d["model"].update(wieghts="w.pt"), ["'model.wieghts'", "did you mean 'weights'", "factory"]),
        (lambda d: d.update(stages=[{"stage": "exprot"}]), ["unknown stage 'exprot'", "known stages: prune,",
                                                             "Did you mean 'export'"]),
        (lambda d: d.update(stages=[{"stage": "export", "opst": 17}]), ["stages[0] (export)", "'opst'", "opset"]),
        (lambda d: d.update(stages=[{"stage": "export", "exporter": "fast"}]), ["'exporter'", "dynamo", "legacy"]),
        (lambda d: d.update(bench={"runs": 0}), ["'bench.runs'", "greater than or equal to 1"]),
        (lambda d: d["model"]["inputs"][0].update(shape=[1, -3, 8, 8]), ["shape", "positive integer"]),
        (lambda d: d["model"].update(path="m.onnx"), ["exactly one of 'factory'", "'path'"]),
        (lambda d: d.update(data={"source": "npz"}), ["'npz' needs 'path'"]),
        (lambda d: d.update(data={"source": "imagenet"}), ["'data.source'", "'digits'", "'npz'"]),
    ],
)  # fmt: skip
def test_each_mistake_gets_one_error_naming_the_key_and_what_is_allowed(change, expected):
    data = minimal()
    change(data)
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data, source="r.yaml")
    message = str(caught.value)
    assert message.startswith("r.yaml") or "stage" in message
    for part in expected:
        assert part in message


def test_missing_recipe_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml is not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


@pytest.mark.parametrize("text", ["no-equals-sign", "=3", "stages.5.opset=1"])
def test_bad_overrides_are_refused(text):
    data = minimal() | {"stages": [{"stage": "export"}]}
    with pytest.raises(RecipeError, match="--set"):
        apply_override(data, text)
