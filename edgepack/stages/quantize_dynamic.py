"""The quantize stage's dynamic int8 ONNX file (``dynamic_int8: true``), for models static int8 cannot serve.

Activations are quantized by onnxruntime at run time (converters/dynamic_int8.py), so nothing is calibrated: the
options that act on a calibration are refused by name, as is a TFLite file, which this path cannot write. The file
is an int8 artifact like any other: verified against its float parent by ``verify.integer_tolerance``.
"""

from __future__ import annotations

from edgepack.core.artifacts import Artifact, Precision

CALIBRATION_OPTIONS = ("cross_layer_equalization", "bias_correction", "smooth_quant", "accuracy_target")


def dynamic_config_problem(config) -> str | None:
    """One line naming what cannot go with ``dynamic_int8`` and what to do (the config's validator raises it)."""
    if config.formats != ["onnx"]:
        return (f"dynamic_int8 writes an ONNX file only, but formats is {config.formats}; set formats: [onnx] (or "
                "drop dynamic_int8 for static int8 in both formats)")  # fmt: skip
    if config.precision != "int8":
        return f"dynamic_int8 is int8; precision {config.precision!r} is static only: set int8 or drop dynamic_int8"
    conflicting = [k for k in CALIBRATION_OPTIONS if getattr(config, k) not in (None, False, "auto")]
    rounding = config.weight_rounding if "weight_rounding" in config.model_fields_set else "nearest"  # default: moot
    conflicting += [f"weight_rounding: {rounding}"] if rounding != "nearest" else []
    conflicting += ["per_channel_weights: false"] if not config.per_channel_weights else []
    if conflicting:
        return (f"{conflicting} act on a static calibration; dynamic_int8 has none (activations are quantized at run "
                "time): remove them or drop dynamic_int8")  # fmt: skip
    return None


def write_dynamic_artifact(config, ctx, source: Artifact) -> Artifact:
    import onnx

    from edgepack.converters.dynamic_int8 import write_dynamic_int8
    from edgepack.converters.onnx_info import onnx_artifact

    out = ctx.artifact_file(Precision.INT8, ".onnx")
    write_dynamic_int8(onnx.load(str(ctx.artifact_path(source))), out)
    artifact = onnx_artifact(ctx.run_dir, out, name="onnx-int8", stage="quantize", parent=source.name,
                             precision=Precision.INT8)  # fmt: skip
    artifact.details["dynamic_int8"] = {"weights": "int8, one scale per output channel", "activations": "run time"}
    return artifact
