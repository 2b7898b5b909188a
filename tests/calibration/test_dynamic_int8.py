"""dynamic_int8: a padded encoder's ONNX file with per-channel int8 weights and run-time activation quantization,
verified like any int8 file; the combinations it cannot serve are refused in one line."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.calibration.test_attention_masks import bert  # noqa: F401  (the module-scoped padded MiniBert)
from tests.edgepack.test_cli import edgepack


def test_a_padded_encoder_converts_to_dynamic_int8_onnx_and_is_verified(bert, tmp_path):  # noqa: F811
    out = tmp_path / "bert.dynamic.onnx"
    done = edgepack("convert", str(bert[0]), "--to", "onnx", "--out", str(out), "--precision", "int8", "--calib",
                    str(bert[1]), "--dynamic-int8")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(re.search(r"cosine (\d\.\d+)", done.stdout).group(1)) >= 0.99
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") >= 6 and "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [initializers[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger"
               and n.input[1] in initializers]  # fmt: skip
    assert weights and all(w.dtype == np.int8 for w in weights)
    scales = [v for k, v in initializers.items() if k.endswith("_scale") and v.size > 1]
    assert scales  # one scale per output channel


@pytest.mark.parametrize("extra,named", [(["--to", "tflite"], "formats"), (["--to", "onnx", "--equalize"],
                                                                           "cross_layer_equalization")])  # fmt: skip
def test_what_dynamic_int8_cannot_serve_is_refused_by_name(bert, tmp_path, extra, named):  # noqa: F811
    out = tmp_path / f"bert.{extra[1]}"
    done = edgepack("convert", str(bert[0]), *extra, "--out", str(out), "--precision", "int8", "--calib",
                    str(bert[1]), "--dynamic-int8")  # fmt: skip
    assert done.returncode != 0 and "dynamic_int8" in done.stderr and named in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not out.exists()
