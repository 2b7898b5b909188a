"""edgepack: trained model in, verified and benchmarked ONNX/TFLite artifacts out.

``edgepack.pack(recipe_or_path, out=...)`` runs a recipe and returns a ``PackResult``. They are loaded on first use so
that ``import edgepack`` stays cheap (torch and TensorFlow load only when a run needs them).
"""

from edgepack.core.version import __version__

__all__ = ["PackResult", "__version__", "pack"]


def __getattr__(name: str):
    if name in ("PackResult", "pack"):
        from edgepack.running import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
