"""edgepack: trained model in, verified and benchmarked ONNX/TFLite artifacts out.

``edgepack.pack(recipe_or_path, out=...)`` runs a recipe and returns a ``PackResult``; ``edgepack.sweep(...)`` runs
many variants of recipes on Ray. They are loaded on first use so
that ``import edgepack`` stays cheap (torch and TensorFlow load only when a run needs them).
"""

from pathlib import Path

from edgepack.core.version import __version__

# Installed, converters/, calibration/ and device_bench/ are edgepack.converters, edgepack.calibration and
# edgepack.device_bench (pyproject's package-dir). In a source checkout they sit beside this folder, the layout the
# project fixed: the same names find them there.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "converters" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))

__all__ = ["PackResult", "__version__", "pack", "sweep"]


def __getattr__(name: str):
    if name in ("PackResult", "pack"):
        from edgepack.running import pipeline

        return getattr(pipeline, name)
    if name == "sweep":  # edgepack.sweeps.sweep (Ray loads only when a sweep runs)
        from edgepack.sweeps import sweep

        return sweep
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
