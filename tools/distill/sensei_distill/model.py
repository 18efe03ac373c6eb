"""Transformer encoder classifier used for both teacher and student.

Every token is one row of the sensor array (T time steps of C channels).
The network is a pre-LayerNorm transformer encoder:

    h0 = x W_in + b_in + P                      (P: learned positional embedding)
    h  = h + MHSA(LN(h));  h = h + FFN(LN(h))   (repeated `layers` times)
    logits = LN(mean_t h) W_out + b_out

The forward pass returns the last layer's attention probabilities and its
value vectors (split into heads) so that the distillation losses can use them.

Linear layers keep their weight as [in, out] and compute ``x @ W + b``: the
ONNX exporter then stores every weight as an initializer under its
PyTorch parameter name, untransposed, which is how ``redistill.py`` recovers
the weights of a student from its ONNX file.
"""

from __future__ import annotations

import dataclasses
import json
import math

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    seq_len: int = 8
    channels: int = 8
    classes: int = 10
    dim: int = 64
    heads: int = 4
    layers: int = 4
    ffn: int = 128

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "ModelConfig":
        raw = json.loads(text)
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(raw) - fields
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return ModelConfig(**raw)


class Dense(nn.Module):
    """Affine map with the weight stored as [in, out]."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight) + self.bias


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = Dense(dim, dim)
        self.k = Dense(dim, dim)
        self.v = Dense(dim, dim)
        self.o = Dense(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor):
        q = self._split(self.q(x))
        k = self._split(self.k(x))
        v = self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        attn = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2)
        b, n = ctx.shape[0], ctx.shape[1]
        out = self.o(ctx.reshape(b, n, self.heads * self.head_dim))
        return out, attn, v


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg.dim, cfg.heads)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.ff1 = Dense(cfg.dim, cfg.ffn)
        self.ff2 = Dense(cfg.ffn, cfg.dim)

    def forward(self, h: torch.Tensor):
        a, attn, v = self.attn(self.ln1(h))
        h = h + a
        h = h + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(h))))
        return h, attn, v


class EncoderClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Dense(cfg.channels, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.seq_len, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = Dense(cfg.dim, cfg.classes)

    def forward_all(self, x: torch.Tensor) -> dict:
        """Returns logits, last-layer attention [B,H,T,T] and values [B,H,T,dh]."""
        h = self.embed(x) + self.pos
        attn = v = None
        for block in self.blocks:
            h, attn, v = block(h)
        logits = self.head(self.ln_f(h.mean(dim=1)))
        return {"logits": logits, "attention": attn, "values": v}

    def forward(self, x: torch.Tensor):
        out = self.forward_all(x)
        return out["logits"], out["attention"]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
