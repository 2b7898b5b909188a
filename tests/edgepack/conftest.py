"""Fixtures shared by the report, manifest, gate and robustness tests: one real digits run, and a results.json that
holds every optional key (quantized artifacts, per-layer SQNR, sparsity, sensitivity, several targets, a gate)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FULL_RESULTS = Path(__file__).parent / "data" / "results_full.json"


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, trained_weights):
    """conv_net trained on digits, packed once with the default robustness block: a PackResult."""
    from edgepack.recipe import parse_recipe
    from edgepack.running.pipeline import pack
    from tests.edgepack.helpers import image_recipe

    out = tmp_path_factory.mktemp("digits_run") / "run"
    recipe = image_recipe("conv_net", trained_weights("conv_net"), labels=[str(d) for d in range(10)])
    return pack(parse_recipe(recipe), out=out, quiet=True)


@pytest.fixture
def full_results() -> dict:
    return json.loads(FULL_RESULTS.read_text())


@pytest.fixture
def full_run_dir(tmp_path) -> Path:
    """A run folder holding only the full fixture results.json, as 'edgepack report/gate' would find it."""
    folder = tmp_path / "full_run"
    folder.mkdir()
    shutil.copyfile(FULL_RESULTS, folder / "results.json")
    return folder
