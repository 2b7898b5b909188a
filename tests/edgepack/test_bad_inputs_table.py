"""Bad input, table-driven (issue 16): each case is what a user passes on the command line, and the answer is exit 1
with one `error:` line (never `internal error`) naming the culprit, and no run folder left behind by a pack that
fails while loading; one that fails later (``late``) keeps what it measured: results.json with the failure, no manifest.

A case's ``make(tmp)`` writes what it needs under ``tmp`` and returns the CLI arguments; a pack case writes to
``tmp/run``, which must not exist afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.edgepack.helpers import image_recipe
from tests.edgepack.test_cli import edgepack

WEIGHTS: dict[str, Path] = {}  # filled once by the autouse fixture: the trained mlp's state_dict


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], list[str]]
    culprit: tuple[str, ...]  # every one appears in the error line
    absent: tuple[str, ...] = ()  # none appears anywhere in stderr (e.g. advice to load a pickle unsafely)
    late: bool = False  # fails after loading: the run folder keeps what was measured, with the failure named


def _pack(tmp: Path, recipe: dict | str, *extra: str) -> list[str]:
    path = tmp / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return ["pack", str(path), "--out", str(tmp / "run"), "--quiet", *extra]


def _mlp(**extra) -> dict:
    return image_recipe("mlp", WEIGHTS["mlp"], bench=None, robustness=None) | extra


def _relu_onnx(tmp: Path, name: str = "relu.onnx") -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = helper.make_graph([node], "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])  # fmt: skip
    path = tmp / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _onnx_recipe(tmp: Path, name: str, shape: list[int]) -> dict:
    model = {"path": str(_relu_onnx(tmp)), "inputs": [{"name": name, "shape": shape}], "output_names": ["y"]}
    return {"name": "relu", "model": model, "task": "other", "bench": None, "robustness": None}


def _npz(tmp: Path, labels: np.ndarray) -> Path:
    path = tmp / "data.npz"
    np.savez(path, image=np.zeros((len(labels), 1, 8, 8), np.float32), labels=labels)
    return path


def _truncated_npz(tmp: Path) -> list[str]:
    path = _npz(tmp, np.arange(40) % 10)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _pack(tmp, _mlp(data={"source": "npz", "path": str(path)}))


def _binary_recipe(tmp: Path) -> list[str]:
    path = tmp / "recipe.yaml"
    path.write_bytes(bytes(range(256)))
    return ["pack", str(path), "--out", str(tmp / "run")]


def _directory_recipe(tmp: Path) -> list[str]:
    (tmp / "recipes").mkdir()
    return ["pack", str(tmp / "recipes"), "--out", str(tmp / "run")]


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def _pickle_as_weights(tmp: Path) -> list[str]:
    import torch

    torch.save({"layer": _Evil()}, tmp / "evil.pt")
    recipe = _mlp()
    recipe["model"]["weights"] = str(tmp / "evil.pt")
    return _pack(tmp, recipe)


def _pickled_npz(tmp: Path) -> list[str]:
    path = tmp / "data.npz"
    np.savez(path, image=np.array([{"a": 1}] * 4, dtype=object))
    return _pack(tmp, _mlp(data={"source": "npz", "path": str(path)}))


def _text_as_pt2(tmp: Path) -> list[str]:
    (tmp / "model.pt2").write_text("not a model")
    recipe = {"model": {"path": str(tmp / "model.pt2"), "inputs": [{"name": "x", "shape": [1, 4]}]}, "bench": None}
    return _pack(tmp, recipe)


def _ssh_without_key(tmp: Path) -> list[str]:
    model = str(_relu_onnx(tmp))
    return ["bench", model, "--target", "ssh://pi@127.0.0.1:9", "--identity-file", str(tmp / "no_key")]


def _directory_weights(tmp: Path) -> list[str]:
    (tmp / "weights").mkdir()
    recipe = _mlp()
    recipe["model"]["weights"] = str(tmp / "weights")
    return _pack(tmp, recipe)


def _factory_that_raises(tmp: Path) -> list[str]:
    recipe = _mlp()
    recipe["model"]["factory"] = "tests.models:train_and_save"  # needs arguments: calling it bare raises TypeError
    del recipe["model"]["weights"]
    return _pack(tmp, recipe)


def _out_is_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("a file the user keeps")
    return [*_pack(tmp, _mlp())[:2], "--out", str(tmp / "taken")]


def _results_without_keys(command: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "results.json").write_text('{"artifacts": []}')
        return [command, str(tmp)]

    return make


def _inspect_empty_onnx(tmp: Path) -> list[str]:
    (tmp / "empty.onnx").write_bytes(b"")
    return ["inspect", str(tmp / "empty.onnx")]


def _duplicate_bench(tmp: Path) -> list[str]:
    text = yaml.safe_dump(_mlp(bench={"runs": 3})) + "bench:\n  runs: 5\n"
    return _pack(tmp, text)


def _null_section(section: str, override: str) -> Callable[[Path], list[str]]:
    return lambda tmp: _pack(tmp, _mlp(**{section: None}), "--set", override)


def _untrained(factory: str, shape: list[int], **extra) -> dict:
    model = {"factory": f"tests.models:{factory}", "inputs": [{"name": "x", "shape": shape}], "output_names": ["y"]}
    return {"name": factory, "model": model, "bench": None, "robustness": None} | extra


def _structured_prune_transformer(tmp: Path) -> list[str]:
    stages = [{"stage": "prune", "method": "structured", "amount": 0.5}, "export"]
    return _pack(tmp, _untrained("tiny_transformer", [1, 8, 8], task="other", stages=stages))


def _int16x8_hardswish(tmp: Path) -> list[str]:
    stages = ["export", {"stage": "quantize", "precision": "int16x8"}]
    return _pack(tmp, _untrained("depthwise_net", [1, 1, 8, 8], data={"source": "digits"}, stages=stages))


def _int16x8_tflite_converter_failure(tmp: Path) -> list[str]:
    np.savez(tmp / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 8, 16)).astype(np.float32))
    stages = ["export", {"stage": "quantize", "precision": "int16x8", "calibration_data": str(tmp / "calib.npz")}]
    return _pack(tmp, _untrained("mha_residual", [1, 8, 16], task="other", stages=stages))


def _unreachable_ssh_target(tmp: Path) -> list[str]:
    return _pack(tmp, _mlp(stages=["export"], targets=["ssh://nobody@127.0.0.1:9"], bench={"runs": 3}))


CASES = [
    Case("three labels for ten logits", lambda t: _pack(t, _mlp(labels=["a", "b", "c"])),
         ("'labels' lists 3 class names", "10 scores")),
    Case("labels outside the output range", lambda t: _pack(t, _mlp(data={"source": "npz",
         "path": str(_npz(t, np.arange(40) % 13))})), ("labels range over [0, 12]", "10 classes")),
    Case("convert --out suffix not --to", lambda t: ["convert", str(_relu_onnx(t)), "--to", "tflite", "--out",
         str(t / "x.onnx")], ("x.onnx", "does not end in .tflite", "x.tflite")),
    Case("inspect an empty .onnx", _inspect_empty_onnx, ("empty.onnx holds no ONNX graph",)),
    Case("duplicate key", _duplicate_bench, ("'bench' is given twice", "lines 1 and")),
    Case("name escapes the run folder", lambda t: _pack(t, _mlp(name="../../escaped")), ("'name'", "plain file-name")),
    Case("name makes subfolders", lambda t: _pack(t, _mlp(name="a/b")), ("'name'", "'a/b'")),
    Case("--set into a null bench", _null_section("bench", "bench.runs=abc"), ("bench.runs", "'abc'")),
    Case("--set into a null robustness", _null_section("robustness", "robustness.snr_db=[a]"),
         ("robustness.snr_db",)),
    Case("--set an unknown section", lambda t: _pack(t, _mlp(), "--set", "unknown.key=1"), ("unknown key 'unknown'",)),
    Case("quantize before export", lambda t: _pack(t, _mlp(stages=["quantize", "export"])),
         ("stages[0] (quantize)", "no export stage comes before it")),
    Case("qat and quantize precisions differ", lambda t: _pack(t, _mlp(stages=[
         {"stage": "qat", "precision": "int8"}, "export", {"stage": "quantize", "precision": "int16x8"}])),
         ("qat stage trains int8", "stages[2] (quantize) asks for int16x8")),
    Case("ONNX input name not in the file", lambda t: _pack(t, _onnx_recipe(t, "z", [1, 4])),
         ("model.inputs names ['z']", "has the inputs ['x']")),
    Case("ONNX input shape not the file's", lambda t: _pack(t, _onnx_recipe(t, "x", [1, 5])),
         ("'x' has shape [1, 5]", "has shape [1, 4]")),
    Case("truncated .npz", _truncated_npz, ("data.npz", "truncated")),
    Case("binary recipe", _binary_recipe, ("recipe.yaml", "not a text (UTF-8) file")),
    Case("directory as the recipe", _directory_recipe, ("recipes is a directory",)),
    Case("malicious pickle as the weights", _pickle_as_weights, ("evil.pt", "loads safely", "torch.save("),
         ("weights_only=False", "weights_only` set to `False", "this must never run")),
    Case("pickled .npz", _pickled_npz, ("data.npz", "pickled Python objects"), ("allow_pickle",)),
    Case(".pt2 that is not a zip", _text_as_pt2, ("model.pt2 is not a torch.export (.pt2) file",), ("Traceback",)),
    Case("directory as the weights", _directory_weights, ("weights file", "is a directory")),
    Case("factory that raises", _factory_that_raises, ("model.factory 'tests.models:train_and_save' raised TypeError",
                                                       "missing")),
    Case("ssh identity file that does not exist", _ssh_without_key, ("the identity file", "no_key", "does not exist"),
         ("cannot reach",)),
    Case("--out is an existing file", _out_is_a_file, ("taken is an existing file",)),
    Case("--out where no folder can be made", lambda t: [*_pack(t, _mlp())[:2], "--out", "/sys/edgepack-run"],
         ("cannot create the run folder /sys/edgepack-run", "choose another --out")),
    Case("gate: results.json lacks keys", _results_without_keys("gate"), ("results.json lacks the key(s)", "recipe")),
    Case("report: results.json lacks keys", _results_without_keys("report"), ("results.json lacks the key(s)",)),
    Case("structured pruning of a transformer", _structured_prune_transformer,
         ("pruning the channels of 'blocks.1.attn.qkv'", "ignored_layers", "unstructured pruning"), late=True),
    Case("int16x8 TFLite of a HardSwish", _int16x8_hardswish,
         ("'n0' (op HardSwish)", "torch module '2' (Hardswish)", "formats: [onnx]"), late=True),
    Case("TFLite converter failure (16x8 residual ADD)", _int16x8_tflite_converter_failure,
         ("quantize: the TFLite converter failed", "(int16 activations)", "'tfl.add' op failed to verify"),
         absent=("callsite(", "site-packages", "I0000", "[E:onnxruntime"),
         late=True),
    Case("unreachable ssh target", _unreachable_ssh_target, ("ssh://nobody@127.0.0.1:9", "cannot reach 127.0.0.1:9"),
         late=True),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _weights(trained_weights):
    WEIGHTS["mlp"] = trained_weights("mlp")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_line(case: Case, tmp_path):
    done = edgepack(*case.make(tmp_path))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr + done.stdout
    assert lines and lines[-1].startswith("error:") and "internal error" not in done.stderr, done.stderr
    for culprit in case.culprit:
        assert culprit in lines[-1], lines[-1]
    for text in case.absent:
        assert text not in done.stderr + done.stdout, done.stderr
    if not case.late:
        assert not (tmp_path / "run").exists()  # a pack failing while it loads leaves no run folder behind
        return
    results = json.loads((tmp_path / "run" / "results.json").read_text())  # what was measured before the failure
    assert results["status"] == "failed" and lines[-1] == f"error: {results['failure']['error']}"
    assert not (tmp_path / "run" / "manifest.json").exists()
