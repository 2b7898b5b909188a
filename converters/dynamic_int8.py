"""Dynamic int8 ONNX: int8 weights (one scale per output channel), activations quantized at run time.

onnxruntime's ``quantize_dynamic`` writes DynamicQuantizeLinear + MatMulInteger/ConvInteger: each activation's
range is measured on the tensor itself at every call, so a transformer's outlier channels (the feed-forward output
and the residual sum before each LayerNorm) cost no static grid its precision. On all-MiniLM-L6-v2 that is cosine
0.993 to float where static int8 gives 0.82 (benchmarks/transformer_int8.py). There is no TFLite counterpart here:
LiteRT's dynamic-range kernels are a different file (float activations, int8 weights), not written by edgepack.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from edgepack.core.artifacts import atomic_path
from edgepack.core.errors import StageError


def write_dynamic_int8(model: onnx.ModelProto, out_path: Path) -> None:
    """``model`` (float) -> ``out_path``, per-channel int8 weights for every op onnxruntime quantizes dynamically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgepack-dynamic-") as folder, atomic_path(Path(out_path)) as tmp:
        source = Path(folder) / "float.onnx"
        onnx.save(model, str(source))
        logging.disable(logging.WARNING)  # its advice to run its pre-processing script, logged on every call
        try:
            quantize_dynamic(source, tmp, per_channel=True, weight_type=QuantType.QInt8)
        except Exception as error:  # noqa: BLE001  onnxruntime's tool raises many kinds; each is a tool failure
            raise StageError("quantize", f"onnxruntime's quantize_dynamic failed: {error}") from error
        finally:
            logging.disable(logging.NOTSET)
