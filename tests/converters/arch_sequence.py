"""Compact torch definitions of transformer, recurrent and streaming networks (written out, no torchvision or HF)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional


class SelfAttention(nn.Module):
    """Multi-head self-attention as BERT and ViT write it: separate q/k/v projections, an additive mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x):
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, additive_mask=None):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if additive_mask is not None:
            scores = scores + additive_mask
        context = torch.softmax(scores, dim=-1) @ v
        return self.out(context.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class EncoderLayer(nn.Module):
    """Post-norm (BERT) or pre-norm (ViT) transformer layer with a GELU feed-forward."""

    def __init__(self, dim: int, heads: int, pre_norm: bool, gelu: str = "none"):
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-12 if not pre_norm else 1e-6), nn.LayerNorm(dim)
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.pre_norm, self.gelu = pre_norm, gelu

    def feed_forward(self, x):
        return self.ff2(functional.gelu(self.ff1(x), approximate=self.gelu))

    def forward(self, x, mask=None):
        if self.pre_norm:
            x = x + self.attention(self.norm1(x), mask)
            return x + self.feed_forward(self.norm2(x))
        x = self.norm1(x + self.attention(x, mask))
        return self.norm2(x + self.feed_forward(x))


class MiniBert(nn.Module):
    """BERT/MiniLM: word + position + segment embeddings, masked attention, tanh pooler over [CLS]."""

    def __init__(self, vocab=1000, dim=64, heads=4, layers=2, max_len=64, gelu="none", mask="finfo"):
        super().__init__()
        self.mask = mask  # "finfo": HF BERT's (1 - mask) x finfo.min; "-inf": masked_fill(-inf), as SDPA exports
        self.words, self.positions = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.segments = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, pre_norm=False, gelu=gelu) for _ in range(layers))
        self.pooler = nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.words(input_ids) + self.positions(positions) + self.segments(token_type_ids)
        x = self.norm(x)
        # (1 - mask) * large negative, broadcast over heads and query positions, as HF BERT does.
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        if self.mask == "-inf":
            additive = torch.zeros_like(additive).masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        for layer in self.layers:
            x = layer(x, additive)
        return x, torch.tanh(self.pooler(x[:, 0]))


class TinyViT(nn.Module):
    """Patch embedding conv, class token, learned positions, pre-norm layers, head on the class token."""

    def __init__(self, image=32, patch=8, dim=64, heads=4, layers=2, classes=10):
        super().__init__()
        self.patches = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.positions = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, pre_norm=True, gelu="tanh") for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.positions
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0])


class RecurrentClassifier(nn.Module):
    """nn.LSTM or nn.GRU (the ONNX LSTM/GRU ops from the legacy exporter) over a feature sequence."""

    def __init__(self, cell: str = "lstm", features=20, hidden=32, layers=2, bidirectional=False, classes=6):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(features, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x):
        sequence, _ = self.rnn(x)
        return self.fc(sequence[:, -1])


class UnrolledRecurrent(nn.Module):
    """LSTMCell/GRUCell stepped in Python: exporters write one unrolled copy of the cell per time step."""

    def __init__(self, cell: str = "lstm", features=20, hidden=32, classes=6):
        super().__init__()
        self.cell = nn.LSTMCell(features, hidden) if cell == "lstm" else nn.GRUCell(features, hidden)
        self.hidden, self.is_lstm = hidden, cell == "lstm"
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        c = x.new_zeros(x.shape[0], self.hidden)
        for step in range(x.shape[1]):
            if self.is_lstm:
                h, c = self.cell(x[:, step], (h, c))
            else:
                h = self.cell(x[:, step], h)
        return self.fc(h)


class StreamingKeywordNet(nn.Module):
    """Streams audio chunk by chunk: a causal conv's left context and a GRU state go in and out as tensors."""

    def __init__(self, features=16, channels=24, hidden=32, kernel=5, classes=4):
        super().__init__()
        self.context = kernel - 1
        self.conv = nn.Conv1d(features, channels, kernel)
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, chunk, conv_state, gru_state):
        frames = torch.cat([conv_state, chunk], dim=2)  # (N, features, context + T)
        x = torch.relu(self.conv(frames)).transpose(1, 2)
        sequence, new_gru_state = self.gru(x, gru_state)
        return self.fc(sequence), frames[:, :, -self.context :], new_gru_state


class BooleanMaskAttention(nn.Module):
    """Attention through torch's SDPA with a boolean key mask (as HF's newer mask code passes it): both exporters
    write ``Where(IsNaN(softmax), 0, softmax)`` so a fully masked row gives zeros, not NaN."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, attention_mask):
        batch, length, dim = x.shape
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        keep = attention_mask[:, None, None, :] > 0
        context = functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.out(context.transpose(1, 2).reshape(batch, length, dim))
