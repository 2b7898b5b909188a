"""What an ONNX file says about itself: inputs, outputs, op counts, opset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgepack.core.artifacts import Artifact, Format, Precision, TensorSpec, sha256_file
from edgepack.core.errors import ModelFileError

LAYOUT_BY_RANK = {3: "NCW", 4: "NCHW", 5: "NCDHW"}


def load_onnx(path: Path):
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelFileError(f"{path} is not a readable ONNX file: {e}") from e
    if not model.graph.output:  # an empty file parses as an empty model
        raise ModelFileError(f"{path} holds no ONNX graph (no outputs; {Path(path).stat().st_size} bytes): it is empty "
                             "or not an ONNX model; export the model again")  # fmt: skip
    return model


def external_data_files(path: Path) -> list[Path]:
    """The sidecar files holding an ONNX file's weights (dynamo exports, large models), resolved beside the file."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = load_onnx(path)
    tensors = [t for t in model.graph.initializer if uses_external_data(t)]
    files = sorted({(Path(path).parent / ExternalDataInfo(t).location) for t in tensors})
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ModelFileError(f"{path} keeps its weights in {missing[0].name}, which is not in {missing[0].parent}: "
                             "copy the weights file beside the model (the name the exporter wrote)")  # fmt: skip
    return files


def copy_self_contained(source: Path, copy: Path) -> None:
    """``copy``: the ONNX file with any sidecar weights moved inside, so the run's artifact is one file whose hash
    covers its weights (the protobuf limit makes that possible up to 2 GB, far above an edge model's size)."""
    import shutil

    import onnx

    if not external_data_files(source):
        shutil.copyfile(source, copy)
        return
    model = onnx.load(str(source), load_external_data=True)
    if model.ByteSize() >= 2**31:
        raise ModelFileError(f"{source} with its external weights is {model.ByteSize() / 2**30:.1f} GB; edgepack "
                             "takes ONNX models up to 2 GB (the largest a single ONNX file can hold)")  # fmt: skip
    onnx.save(model, str(copy))


def tensor_specs(values, initializers: set[str] = frozenset()) -> list[TensorSpec]:
    from onnx.helper import tensor_dtype_to_np_dtype

    specs = []
    for value in values:
        if value.name in initializers:
            continue  # old exporters list weights as inputs too
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        specs.append(
            TensorSpec(
                name=value.name,
                shape=shape,
                dtype=tensor_dtype_to_np_dtype(tensor_type.elem_type).name,
                layout=LAYOUT_BY_RANK.get(len(shape)),
            )
        )
    return specs


def onnx_op_counts(model) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def onnx_artifact(
    run_dir: Path, path: Path, *, name: str, stage: str, parent: str | None, precision: Precision = Precision.FP32
) -> Artifact:
    model = load_onnx(path)
    initializers = {t.name for t in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return Artifact(
        name=name,
        format=Format.ONNX,
        precision=precision,
        path=str(Path(path).relative_to(run_dir)),
        sha256=sha256_file(path),
        bytes=Path(path).stat().st_size,
        parent=parent,
        stage=stage,
        inputs=tensor_specs(model.graph.input, initializers),
        outputs=tensor_specs(model.graph.output),
        op_counts=onnx_op_counts(model),
        details={"opset": opset, "producer": model.producer_name},
    )


def constant_values(graph, names: set[str]) -> dict:
    """The values (float32) of initializers and Constant-node outputs named in ``names``."""
    import numpy as np
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in names}
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in names and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return {name: v.astype(np.float32) for name, v in found.items()}
