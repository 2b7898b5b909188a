"""Suite-wide setup: keep tool caches out of the user's home, share trained tiny models between tests."""

from __future__ import annotations

import os
from pathlib import Path

# onnxruntime, Keras and matplotlib write under ~ on import; point them at the venv before anything imports them.
_CACHE = Path(__file__).resolve().parents[1] / ".venv" / "cache"
os.environ["HOME"] = str(_CACHE / "home")
os.environ.setdefault("KERAS_HOME", str(_CACHE / "keras"))
os.environ.setdefault("MPLCONFIGDIR", str(_CACHE / "mpl"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
(_CACHE / "home").mkdir(parents=True, exist_ok=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test models are tiny: torch trains them several times faster on one thread than split over two busy
    cores (measured 6.6 s vs 50 s on the 2-core CI machine with other work running). Runtimes under test run in
    their own processes or set their own threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_weights(tmp_path_factory):
    """Train each tiny test model on digits once per session; returns {factory name: weights path}."""
    from tests import models

    folder = tmp_path_factory.mktemp("weights")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = models.train_and_save(name, folder / f"{name}.pt")
        return cache[name]

    return get
