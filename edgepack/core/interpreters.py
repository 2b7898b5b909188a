"""The one place a TFLite interpreter is found: LiteRT (``ai_edge_litert``), else ``tflite_runtime``, else
``tensorflow.lite``, whichever a machine has. (device_bench/runner.py repeats this search on purpose: it is copied
to devices and imports nothing of the project.)"""

from __future__ import annotations

from importlib import import_module, metadata

from edgepack.core.errors import ModelFileError

# (module holding Interpreter, runtime name in records, distribution whose version is recorded)
TFLITE_RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai_edge_litert", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite_runtime", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow", "tensorflow"),
)


def tflite_interpreter(*, default_delegates: bool = True, **arguments) -> tuple[object, str, str]:
    """(Interpreter(**arguments), runtime name, version) from the first TFLite runtime installed.

    ``arguments``: model_path or model_content, num_threads, experimental_preserve_all_tensors...
    ``default_delegates=False`` keeps XNNPACK out, so the op list is the model's own builtin ops."""
    for module_name, runtime, distribution in TFLITE_RUNTIMES:
        try:
            module = import_module(module_name)
        except ImportError:
            continue
        if not default_delegates:
            arguments["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        return module.Interpreter(**arguments), runtime, package_version(distribution)
    raise ModelFileError("no TFLite runtime found; install ai-edge-litert, tflite-runtime or tensorflow")


def package_version(distribution: str) -> str:
    for name in (distribution, "tensorflow-cpu"):  # tensorflow may be installed as tensorflow-cpu
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"
