"""The import rules of docs/architecture.md, checked on the source (an ast walk over every module, imports inside
functions included, ``if TYPE_CHECKING:`` ones not), and the cost of the commands that only read a run folder."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.stages.registry import BUILT_IN_STAGES

REPO = Path(__file__).resolve().parents[1]
# source folder -> the name it installs as (pyproject's package-dir)
PACKAGES = {"edgepack": "edgepack", "converters": "edgepack.converters", "calibration": "edgepack.calibration",
            "device_bench": "edgepack.device_bench"}  # fmt: skip
# Lowest first: a module may import its own layer and the ones below, never one above.
LAYERS = ["edgepack.core", "edgepack.device_bench", "edgepack.converters", "edgepack.calibration", "edgepack"]
FACADE = "edgepack"  # edgepack/__init__.py: ``edgepack.pack`` loads the pipeline on first use, by design


def module_files() -> dict[str, Path]:
    files = {}
    for folder, installed in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            name = ".".join([installed, *path.relative_to(REPO / folder).with_suffix("").parts])
            files[name.removesuffix(".__init__")] = path
    return files


MODULES = module_files()


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports anywhere in its code, ``if TYPE_CHECKING:`` blocks left out."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(
        block.test) for n in ast.walk(block)}  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules or {node.module}
    return {name for name in found if name in MODULES}


GRAPH = {name: project_imports(path) for name, path in MODULES.items() if name != FACADE}


def layer(module: str) -> int:
    """The index in LAYERS of the longest prefix that holds ``module``."""
    holding = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS.index(max(holding, key=len))


def test_no_module_imports_a_layer_above_its_own():
    assert {layer(name) for name in GRAPH} == set(range(len(LAYERS)))  # every layer holds modules
    upward = sorted((a, b) for a, imports in GRAPH.items() for b in imports if layer(b) > layer(a))
    assert upward == []


def test_there_are_no_import_circles():
    assert strongly_connected_groups(GRAPH) == []


def strongly_connected_groups(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of two or more modules that import each other, directly or not."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_stages_do_not_import_each_other():
    stages = set(BUILT_IN_STAGES.values())
    crossing = sorted((a, b) for a in stages for b in GRAPH[a] if b in stages and b != a)
    assert crossing == []


def test_the_reports_read_results_json_only():
    """Nothing below them: no pipeline, stage, recipe, compression or runtime code."""
    allowed = ("edgepack.reports", "edgepack.core", "edgepack.recipe_errors")
    assert any(a.startswith("edgepack.reports.") for a in GRAPH)
    reaching = sorted((a, b) for a, imports in GRAPH.items() if a.startswith("edgepack.reports.") for b in imports
                      if not b.startswith(allowed))  # fmt: skip
    assert reaching == []


def test_the_device_runner_imports_nothing_of_the_project():
    assert GRAPH["edgepack.device_bench.runner"] == set()


def test_a_toy_circle_is_found():
    """The check itself: a graph with a circle reports it."""
    assert strongly_connected_groups({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


READ_ONLY_COMMAND = """
import json, sys
from edgepack.cli import main
sys.argv = ["edgepack", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "tensorflow", "onnxruntime", "ai_edge_litert") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize("command", [["gate", "{run}", "--max-bytes", "100MB"], ["report", "{run}"]])
def test_commands_that_read_a_run_folder_load_no_runtime(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(REPO / "tests" / "edgepack" / "data" / "results_full.json", run / "results.json")
    arguments = json.dumps([part.format(run=run) for part in command])
    done = subprocess.run([sys.executable, "-c", READ_ONLY_COMMAND, arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["heavy"] == [], outcome
    assert outcome["code"] in (0, 1, None), done.stderr  # the gate may fail its budgets; it must not crash
    if command[0] == "report":
        assert (run / "report.html").is_file() and (run / "manifest.json").is_file()


def test_one_installed_name():
    """The old top-level names are gone: every project import goes through edgepack."""
    stray = sorted({name for path in MODULES.values() for name in raw_imports(path)} & {"converters", "calibration",
                   "device_bench"})  # fmt: skip
    assert stray == []


def raw_imports(path: Path) -> set[str]:
    """The first name of every module ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names
