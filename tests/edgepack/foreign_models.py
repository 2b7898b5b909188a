"""Models from the wild, built in code: a Hugging Face BERT encoder (from a config, no download) exported as
edgepack's export stage and as a HF export (dynamic batch and sequence) do it, and a voice-activity detector
with a [2, batch, 128] state and a scalar sample rate. Shared by the tests and benchmarks/foreign_coverage.py."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from edgepack.converters.torch_to_onnx import export_to_onnx, quiet_logger

BERT_INPUTS, BERT_OUTPUTS = ["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"]
SEQUENCE, VOCAB = 16, 100


class EncoderOutputs(torch.nn.Module):
    """The HF model's output object as a tuple of tensors, what an ONNX export needs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def tiny_bert(attention: str) -> torch.nn.Module:
    """BertModel from a config (random weights, seed 0); ``attention``: 'eager' or 'sdpa'."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=VOCAB, attn_implementation=attention)  # fmt: skip
    return EncoderOutputs(BertModel(config).eval()).eval()


def bert_feeds(samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids and a mask padding the last 1..6 positions of each sample, as a tokenizer pads a batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (samples, SEQUENCE), dtype=np.int64)
    mask = (np.arange(SEQUENCE)[None] < SEQUENCE - rng.integers(1, 7, (samples, 1))).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def export_bert(attention: str, exporter: str, path: Path, dynamic: bool = False) -> Path:
    """``dynamic``: batch and sequence left dynamic, as a HF (optimum) export leaves them."""
    model, feeds = tiny_bert(attention), bert_feeds(1)
    example = tuple(torch.from_numpy(feeds[name]) for name in BERT_INPUTS)
    if not dynamic:
        export_to_onnx(model, example, path, input_names=BERT_INPUTS, output_names=BERT_OUTPUTS, opset=18,
                       dynamo=exporter == "dynamo")  # fmt: skip
        return path
    if exporter == "dynamo":
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
        axes = {"dynamic_shapes": {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
                "external_data": False}  # fmt: skip
    else:
        axes = {"dynamic_axes": {name: {0: "batch", 1: "sequence"} for name in BERT_INPUTS}}
    # The dynamo exporter prints its progress to stdout.
    with warnings.catch_warnings(), quiet_logger("torch.onnx"), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), input_names=BERT_INPUTS, output_names=BERT_OUTPUTS,
                          opset_version=18, dynamo=exporter == "dynamo", **axes)  # fmt: skip
    return path


AUDIO, STATE, SAMPLE_RATE = [1, 512], [2, 1, 128], 16000


class VoiceActivityDetector(torch.nn.Module):
    """Silero-VAD's interface: audio [1, 512], a state [2, batch, 128] (batch on axis 1) carried between calls, a
    scalar int64 sample rate that scales the audio (a random sample rate gives nonsense, 0 gives inf)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Linear(512, 128)
        self.carry = torch.nn.Linear(256, 128)
        self.head = torch.nn.Linear(128, 1)

    def forward(self, audio, state, sr):
        scaled = audio / (sr.to(torch.float32) / 16000.0)
        previous = torch.cat([state[0], state[1]], dim=-1)  # [batch, 256]
        hidden = torch.tanh(self.features(scaled) + self.carry(previous))
        new_state = torch.stack([hidden, 0.5 * (state[0] + hidden)])  # [2, batch, 128]
        return torch.sigmoid(self.head(hidden)), new_state


def vad_feeds(samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Samples as the data contract holds them: batch axis first (the state's axis 1, the scalar's none)."""
    rng = np.random.default_rng(seed)
    return {
        "audio": (rng.standard_normal((samples, 512)) * 0.1).astype(np.float32),
        "state": (rng.standard_normal((samples, 2, 128)) * 0.5).astype(np.float32),
        "sr": np.full(samples, SAMPLE_RATE, np.int64),
    }


def export_vad(path: Path, dynamic_batch: bool = False) -> Path:
    """``dynamic_batch``: the batch left dynamic, as Silero's export leaves it: axis 0 of audio, axis 1 of state."""
    example = (torch.zeros(AUDIO), torch.zeros(STATE), torch.tensor(SAMPLE_RATE))
    names = {"input_names": ["audio", "state", "sr"], "output_names": ["speech", "new_state"]}
    if not dynamic_batch:
        export_to_onnx(VoiceActivityDetector().eval(), example, path, **names, opset=17, dynamo=False)
        return path
    axes = {"audio": {0: "batch"}, "state": {1: "batch"}, "speech": {0: "batch"}, "new_state": {1: "batch"}}
    with warnings.catch_warnings(), quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        torch.onnx.export(VoiceActivityDetector().eval(), example, str(path), **names, opset_version=17,
                          dynamo=False, dynamic_axes=axes)  # fmt: skip
    return path
