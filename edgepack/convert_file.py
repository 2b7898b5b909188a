"""`edgepack convert`: one file to ONNX or TFLite without a recipe, by running the same pipeline on a recipe
made in code, so the file gets the same verification as a packed artifact."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgepack.core.artifacts import atomic_path
from edgepack.core.errors import ModelFileError, UserError
from edgepack.recipe import SUFFIX_FORMATS, InputSpec, ModelFormat, Recipe, Task

TARGETS = ("onnx", "tflite")


def parse_input_shapes(items: list[str]) -> dict[str, list[int]]:
    """['image=1x3x224x224', 'state=2x1x128@1', 'sr='] -> {'image': [1, 3, 224, 224], 'state': [2, 1, 128],
    'sr': []}: '@AXIS' names the batch axis (parse_batch_axes), nothing after '=' is a scalar."""
    shapes = {}
    for item in items:
        name, sep, rest = item.partition("=")
        dims, _, axis = rest.partition("@")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if dims else []
            int(axis or 0)
        except ValueError:
            shape = [0]
        if not sep or not name or min(shape, default=1) <= 0:
            raise UserError(f"--input-shape {item!r}: expected name=DIMxDIMx... (e.g. image=1x3x224x224), '@AXIS' "
                            "after it when the batch is not axis 0 (state=2x1x128@1), name= for a scalar")  # fmt: skip
        shapes[name] = shape
    return shapes


def parse_input_values(items: list[str]) -> dict[str, Path]:
    """['sr=sr.npy'] -> {'sr': Path('sr.npy')}: an input's value, fed where edgepack would make up random data."""
    values = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path.endswith(".npy"):
            raise UserError(f"--input {item!r}: expected NAME=FILE.npy, e.g. sr=sample_rate.npy")
        values[name] = Path(path)
    return values


def parse_batch_axes(items: list[str]) -> dict[str, int]:
    """The '@AXIS' of each --input-shape that has one (checked by parse_input_shapes)."""
    return {item.partition("=")[0]: int(item.partition("@")[2]) for item in items if "@" in item}


PRECISIONS = ("fp32", "int8", "int16x8")


def convert_file(model: Path, *, to: str, out: Path, input_shapes: list[str], precision: str = "fp32",
                 calib: Path | None = None, quant_options: dict | None = None,
                 min_cosine: float | None = None, input_values: dict[str, Path] | None = None) -> dict:  # fmt: skip
    """Convert (and with ``precision`` int8/int16x8, quantize from ``calib``) one file; verified like a packed one.

    ``quant_options``: more quantize-stage fields (per_channel_weights, cross_layer_equalization, bias_correction).
    ``min_cosine``: an integer file's floor on each output's cosine to the source (default 0.99).
    ``input_values``: input name -> .npy holding its value in every verification sample (a sample rate, a state)."""
    if to not in TARGETS:
        raise UserError(f"--to {to!r} is not a target format; allowed: {', '.join(TARGETS)}")
    _check_out_suffix(Path(out), to)
    _check_precision(precision, calib)
    if quant_options and precision == "fp32":
        raise UserError(f"{', '.join(quant_options)} only apply to --precision int8 or int16x8, not fp32")
    model_format = _source_format(Path(model), to, precision)
    recipe = _recipe_for(Path(model).resolve(), model_format, to, parse_input_shapes(input_shapes),
                         parse_batch_axes(input_shapes), input_values or {})  # fmt: skip
    if precision != "fp32":
        recipe = _quantizing(recipe, to, precision, Path(calib).resolve(), quant_options or {})
    if min_cosine is not None:
        recipe = _with_min_cosine(recipe, precision, min_cosine)
    from edgepack.running.pipeline import pack

    with tempfile.TemporaryDirectory(prefix="edgepack-convert-") as tmp:
        result = pack(recipe, out=tmp)
        artifact = [a for a in result.artifacts if a["format"] == to][-1]
        with atomic_path(Path(out)) as staged:
            shutil.copyfile(Path(tmp) / artifact["path"], staged)
    outputs = artifact["verification"]["outputs"]
    worst = max(outputs, key=lambda o: o["max_abs_error"])
    return {
        "path": str(out),
        "bytes": artifact["bytes"],
        "precision": artifact["precision"],
        "max_abs_error": worst["max_abs_error"],
        "tolerance": worst["tolerance"],
        "cosine_similarity": min(o["cosine_similarity"] for o in outputs),
        "min_cosine": worst.get("min_cosine"),
        "samples": artifact["verification"]["samples"],
    }


def _with_min_cosine(recipe: Recipe, precision: str, min_cosine: float) -> Recipe:
    if precision == "fp32":
        raise UserError("--min-cosine is the floor for integer files (--precision int8 or int16x8); a float file is "
                        "held to a max abs error instead")  # fmt: skip
    if not -1 <= min_cosine <= 1:
        raise UserError(f"--min-cosine {min_cosine}: a cosine lies in [-1, 1]; the default is 0.99")
    verify = recipe.verify.model_dump() | {"integer_tolerance": {"min_cosine": min_cosine}}
    return Recipe.model_validate(recipe.model_dump() | {"verify": verify})


def _check_out_suffix(out: Path, to: str) -> None:
    if out.suffix.lower() != f".{to}":
        raise UserError(f"--out {out} does not end in .{to}, the format asked for with --to {to}; "
                        f"name it {out.with_suffix('.' + to).name} (or change --to)")  # fmt: skip
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the file to write, e.g. {out / ('model.' + to)}")


def _check_precision(precision: str, calib: Path | None) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and calib is None:
        raise UserError(f"--precision {precision} needs calibration data: --calib DATA.npz (one array per input)")
    if calib is not None and precision == "fp32":
        raise UserError("--calib is only used with --precision int8 or int16x8")


def _quantizing(recipe: Recipe, to: str, precision: str, calib: Path, options: dict) -> Recipe:
    """Replace a float 'convert' by a quantize stage writing only the requested format from ``calib``.

    The calibration file also gives the verification samples: random inputs lie outside the ranges an integer
    file was calibrated for, so their error would measure clipping, not the file. Only agreement with the source
    is claimed (task 'other': no accuracy on samples calibration saw)."""
    stages = [s.model_dump() for s in recipe.stages if s.stage == "export"]
    stages.append({"stage": "quantize", "precision": precision, "calibration_data": str(calib), "formats": [to]}
                  | options)  # fmt: skip
    data = {"source": "npz", "path": str(calib)}
    return Recipe.model_validate(recipe.model_dump() | {"stages": stages, "data": data})


def _source_format(model: Path, to: str, precision: str = "fp32") -> ModelFormat:
    if not model.is_file():
        raise ModelFileError(f"model file {model} does not exist")
    model_format = SUFFIX_FORMATS.get(model.suffix.lower())
    if model_format is None:
        raise ModelFileError(
            f"{model}: cannot convert a {model.suffix or 'suffix-less'} file; accepted: {', '.join(SUFFIX_FORMATS)}"
        )
    if model_format == ModelFormat.TFLITE:
        raise UserError(f"{model} is already TFLite: edgepack benches and reports it as it is ('edgepack bench', "
                        "'edgepack inspect', or a recipe with model.path), it does not convert it back")  # fmt: skip
    if model_format == ModelFormat.ONNX and to == "onnx" and precision == "fp32":
        raise UserError(f"{model} is already ONNX; use --to tflite")
    return model_format


def _recipe_for(model: Path, model_format: ModelFormat, to: str, shapes: dict[str, list[int]],
                batch_axes: dict[str, int] | None = None, values: dict[str, Path] | None = None) -> Recipe:  # fmt: skip
    inputs = _onnx_inputs(model, shapes) if model_format == ModelFormat.ONNX else _torch_inputs(model, shapes)
    for spec in inputs:
        if spec["name"] in (batch_axes or {}):
            spec["batch_axis"] = batch_axes[spec["name"]]
        if spec["name"] in (values or {}):
            spec["value"] = str(Path(values[spec["name"]]).resolve())
    unknown = sorted((set(batch_axes or {}) | set(values or {})) - {spec["name"] for spec in inputs})
    if unknown:
        raise UserError(f"--input-shape/--input name {unknown}, not inputs of {model}; its inputs: "
                        f"{[spec['name'] for spec in inputs]}")  # fmt: skip
    stages = [] if model_format == ModelFormat.ONNX else [{"stage": "export"}]
    stages += [{"stage": "convert"}] if to == "tflite" else []
    return Recipe.model_validate(
        {
            "name": model.stem,
            "model": {
                "path": str(model),
                "format": str(model_format),
                "inputs": inputs,
                "output_names": _output_names(model, model_format, inputs),
            },
            "task": Task.OTHER,
            "stages": stages,
            "bench": None,
        }
    )


def _torch_inputs(model: Path, shapes: dict[str, list[int]]) -> list[dict]:
    if not shapes:
        raise UserError(f"{model} is a torch file: give every input's shape, e.g. --input-shape input=1x3x224x224")
    return [{"name": name, "shape": shape} for name, shape in shapes.items()]


def _onnx_inputs(model: Path, shapes: dict[str, list[int]]) -> list[dict]:
    from edgepack.converters.onnx_info import load_onnx, tensor_specs

    onnx_model = load_onnx(model)
    specs = tensor_specs(onnx_model.graph.input, {t.name for t in onnx_model.graph.initializer})
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise UserError(
            f"--input-shape names {sorted(unknown)} are not inputs of {model}; its inputs: {[s.name for s in specs]}"
        )
    return [
        {"name": s.name, "shape": shapes.get(s.name) or _static(s.shape, s.name, model), "dtype": s.dtype}
        for s in specs
    ]


def _static(shape: list[int], name: str, model: Path) -> list[int]:
    """A dynamic batch becomes 1; any other dynamic dimension needs --input-shape."""
    fixed = [1 if i == 0 and d <= 0 else d for i, d in enumerate(shape)]
    if min(fixed, default=1) <= 0:
        raise UserError(
            f"input {name!r} of {model} has dynamic dimensions {shape}; fix them with "
            f"--input-shape {name}="
            + "x".join(str(d if d > 0 else 1) for d in fixed)
            + " (with @AXIS after it when the batch is not axis 0, e.g. a [2, batch, 128] state: 2x1x128@1)"
        )
    return fixed


def _output_names(model: Path, model_format: ModelFormat, inputs: list[dict]) -> list[str]:
    if model_format == ModelFormat.ONNX:
        from edgepack.converters.onnx_info import load_onnx

        return [o.name for o in load_onnx(model).graph.output]
    count = _count_torch_outputs(model, model_format, inputs)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _count_torch_outputs(model: Path, model_format: ModelFormat, inputs: list[dict]) -> int:
    import torch

    from edgepack.recipe import ModelConfig
    from edgepack.running.loading import load_model

    config = ModelConfig(path=model, format=model_format, inputs=[InputSpec(**i) for i in inputs])
    loaded = load_model(config)
    with torch.no_grad():
        result = loaded.module(*[torch.zeros(i["shape"]) for i in inputs])
    return 1 if isinstance(result, torch.Tensor) else len(result)
