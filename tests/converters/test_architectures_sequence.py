"""Transformers, recurrent nets and a streaming model with state: exported from torch (legacy and dynamo), converted,
run in LiteRT, compared with onnxruntime and torch; named int64 inputs, several outputs, fused GELU, no WHILE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgepack.converters.runtime import TFLiteSession

from tests.converters.arch_sequence import (
    BooleanMaskAttention,
    MiniBert,
    RecurrentClassifier,
    StreamingKeywordNet,
    TinyViT,
    UnrolledRecurrent,
)
from tests.converters.conftest import run_tflite, worst_error
from tests.converters.torch_check import check_architecture, torch_outputs

BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
# Ops only the Abramowitz-Stegun erf of an unfused erf-GELU would bring in.
ERF_OPS = {"SIGN", "EXP", "ABS"}


def bert_examples(length: int = 16, padding: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 1000, (1, length), generator=generator)
    mask = torch.ones(1, length, dtype=torch.int64)
    mask[:, length - padding :] = 0  # Padding that attention must ignore.
    segments = (torch.arange(length) >= length // 2).to(torch.int64)[None]
    return ids, mask, segments


@pytest.mark.parametrize("dynamo", [False, True])
def test_bert_encoder_with_int64_inputs_and_attention_mask(tmp_path, dynamo):
    torch.manual_seed(0)
    outputs = ["last_hidden_state", "pooler_output"]
    result = check_architecture(
        MiniBert(layers=2).eval(), bert_examples(), tmp_path, BERT_INPUTS, outputs, dynamo=dynamo
    )
    result.assert_matches()
    inputs = result.conversion.inputs
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [(n, "int64", [1, 16]) for n in BERT_INPUTS]
    assert [s.name for s in result.conversion.outputs] == outputs
    assert result.onnx_ops["Erf" if not dynamo else "Gelu"] == 2  # Legacy writes GELU out; both end as one op.
    assert result.ops["GELU"] == 2 and not ERF_OPS & set(result.ops), result.ops
    assert result.ops["GATHER"] >= 3 and result.ops["BATCH_MATMUL"] == 4, result.ops  # 3 embeddings, 2 per layer
    assert result.ops.get("TRANSPOSE", 0) <= 4 * 2, result.ops  # Head split and merge only: q, k, v, context.


def test_masked_positions_do_not_change_the_unmasked_outputs(tmp_path):
    torch.manual_seed(0)
    ids, mask, segments = bert_examples()
    result = check_architecture(MiniBert(layers=1).eval(), (ids, mask, segments), tmp_path, BERT_INPUTS, ["h", "p"])
    result.assert_matches()
    other_ids = ids.clone()
    other_ids[:, -5:] = 7  # Only padded positions change.
    feeds = {"input_ids": other_ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": segments.numpy()}
    tflite = run_tflite(tmp_path / "MiniBert_legacy_17.tflite", feeds)
    reference = run_tflite(tmp_path / "MiniBert_legacy_17.tflite", {**feeds, "input_ids": ids.numpy()})
    np.testing.assert_allclose(tflite["h"][:, :11], reference["h"][:, :11], atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
def test_vit_patch_embedding_class_token_and_tanh_gelu(tmp_path, dynamo):
    torch.manual_seed(0)
    image = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)),)
    result = check_architecture(TinyViT(layers=2).eval(), image, tmp_path, ["image"], ["logits"], dynamo=dynamo)
    result.assert_matches()
    assert result.ops["GELU"] == 2 and "TANH" not in result.ops, result.ops
    # Flatten(2) + transpose(1, 2) of the NHWC patch grid is free; only attention's head split/merge transposes.
    assert result.ops["TRANSPOSE"] == 4 * 2, result.ops
    assert result.conversion.inputs[0].layout == "NHWC"


def sequence(steps: int = 10, features: int = 20) -> tuple[torch.Tensor]:
    return (torch.randn(1, steps, features, generator=torch.Generator().manual_seed(5)),)


@pytest.mark.parametrize(
    ("cell", "bidirectional", "dynamo"),
    [("lstm", False, False), ("lstm", False, True), ("lstm", True, False), ("gru", False, False), ("gru", True, True)],
)
def test_lstm_and_gru_ops_are_unrolled_without_loops(tmp_path, cell, bidirectional, dynamo):
    torch.manual_seed(0)
    module = RecurrentClassifier(cell, layers=2, bidirectional=bidirectional).eval()
    result = check_architecture(module, sequence(), tmp_path, ["x"], ["logits"], dynamo=dynamo)
    result.assert_matches()
    assert result.onnx_ops[cell.upper()] == 2
    assert "WHILE" not in result.ops and result.ops["TRANSPOSE"] == 0, result.ops
    directions = 2 if bidirectional else 1
    # Per layer and direction: one input projection, one recurrent matmul per step after the first; the head.
    assert result.ops["FULLY_CONNECTED"] == 2 * directions * 10 + 1, result.ops


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unrolled_cells_convert(tmp_path, cell):
    torch.manual_seed(0)
    result = check_architecture(UnrolledRecurrent(cell).eval(), sequence(), tmp_path, ["x"], ["logits"])
    result.assert_matches()
    assert result.onnx_ops["Gemm"] == 21 and result.ops["FULLY_CONNECTED"] == 20, result.ops


@pytest.mark.parametrize("dynamo", [False, True])
def test_streaming_model_carries_state_through_inputs_and_outputs(tmp_path, dynamo):
    torch.manual_seed(0)
    module = StreamingKeywordNet().eval()
    generator = torch.Generator().manual_seed(6)
    chunks = [torch.randn(1, 16, 8, generator=generator) for _ in range(3)]
    state = (torch.zeros(1, 16, 4), torch.zeros(1, 1, 32))
    inputs, outputs = ["chunk", "conv_state", "gru_state"], ["logits", "conv_state_out", "gru_state_out"]
    result = check_architecture(module, (chunks[0], *state), tmp_path, inputs, outputs, dynamo=dynamo)
    result.assert_matches()
    layouts = {s.name: s.layout for s in result.conversion.inputs + result.conversion.outputs}
    assert layouts["conv_state"] == layouts["conv_state_out"] == "NWC"  # Fed back as is, no transposes.
    assert result.ops.get("TRANSPOSE", 0) == 0, result.ops
    tflite_path = next(tmp_path.glob("*.tflite"))
    assert [s.name for s in TFLiteSession(tflite_path).outputs] == outputs
    torch_state, tflite_state = state, {"conv_state": state[0].numpy(), "gru_state": state[1].numpy()}
    for chunk in chunks:  # Stream: each call's state outputs are the next call's state inputs.
        expected = torch_outputs(module, (chunk, *torch_state), outputs)
        actual = run_tflite(tflite_path, {"chunk": chunk.numpy(), **tflite_state})
        error, tolerance = worst_error(expected, actual)
        assert error <= tolerance, f"{error:.3g} > {tolerance:.3g}"
        torch_state = (torch.from_numpy(expected["conv_state_out"]), torch.from_numpy(expected["gru_state_out"]))
        tflite_state = {"conv_state": actual["conv_state_out"], "gru_state": actual["gru_state_out"]}


def test_boolean_mask_attention_lowers_isnan(tmp_path):
    # The dynamo exporter writes the same Where(IsNaN) (onnxscript's SDPA with a boolean mask); legacy is faster.
    torch.manual_seed(0)
    x, mask = torch.randn(1, 8, 16), torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    result = check_architecture(BooleanMaskAttention().eval(), (x, mask), tmp_path, ["x", "mask"], ["y"])
    result.assert_matches()
    assert result.onnx_ops["IsNaN"] == 1 and result.ops["SELECT_V2"] >= 1, result.ops
