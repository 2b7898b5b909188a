"""A transformer's dense layers (constant-weight MatMuls) get one int8 scale per output column in both files: the
ONNX DequantizeLinear along axis 1 of the [K, N] weight, the TFLite FULLY_CONNECTED along its output axis (LiteRT's
int8 FULLY_CONNECTED takes per-channel weights; the attention's BATCH_MATMULs multiply two activations, no weight)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from tests.calibration.test_attention_masks import BERT_INPUTS, padded_bert_data
from tests.converters.arch_sequence import MiniBert
from tests.converters.integer_check import quantize_both
from tests.converters.torch_check import export


@pytest.mark.slow  # 36 s on 2 shared cores: a TFLite conversion of a BERT
def test_dense_layers_of_an_encoder_are_per_channel_in_onnx_and_tflite(tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    torch.manual_seed(0)
    examples = tuple(torch.from_numpy(a) for a in padded_bert_data(1).values())
    path = export(MiniBert(layers=1).eval(), tmp_path / "bert.onnx", examples, BERT_INPUTS, ["hidden", "pooled"])
    files = quantize_both(path, ArrayDataset(padded_bert_data(32)))

    model = onnx.load(str(files.onnx_path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    dense = [
        producers[n.input[1]]
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.input[1] in producers
        and producers[n.input[1]].op_type == "DequantizeLinear"
        and n.input[1] + "_quantized" in initializers
    ]
    assert len(dense) == 6  # query, key, value, out, ff1, ff2 (the pooler is a Gemm)
    for dequantize in dense:
        weight = initializers[dequantize.input[0]]
        assert [a.i for a in dequantize.attribute if a.name == "axis"] == [1]
        assert initializers[dequantize.input[1]].shape == (weight.shape[1],)

    tflite = schema.ModelT.InitFromPackedBuf(bytearray(files.tflite_path.read_bytes()), 0)
    graph, codes = tflite.subgraphs[0], [c.builtinCode for c in tflite.operatorCodes]
    fully_connected = [op for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.FULLY_CONNECTED]
    assert len(fully_connected) == 7  # the six dense layers and the pooler
    for op in fully_connected:
        weight = graph.tensors[op.inputs[1]]
        assert weight.type == schema.TensorType.INT8
        assert len(weight.quantization.scale) == weight.shape[0] > 1  # [N, K]: one scale per output
        assert weight.quantization.quantizedDimension == 0
    assert np.isfinite(np.concatenate([graph.tensors[op.inputs[1]].quantization.scale for op in fully_connected])).all()
