"""RAM's tagging head: a Query2Label-style decoder over the image tokens, cross-attention only.

Two BERT layers whose self-attention and embeddings RAM deletes: the label embeddings are the queries,
the image tokens the keys and values. Our names (q_proj, ..., as in `bubogpt.qformer`) differ from the
official BERT ones; `checkpoint.py` holds the rename table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.ram.config import RamConfig


class TaggingCrossAttention(nn.Module):
    """BERT cross-attention block (label queries attend to image tokens), residual, post-LayerNorm."""

    def __init__(self, hidden: int, kv_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(kv_dim, hidden)
        self.v_proj = nn.Linear(kv_dim, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(context))
        v = self._heads(self.v_proj(context))
        # BERT order: product, then divide by sqrt(head_dim). No mask: RAM's image mask is all ones,
        # which BERT turns into an additive 0.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        out = scores.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.norm(self.out_proj(out) + x)


class TaggingMlp(nn.Module):
    """BERT intermediate + output: fc1, GELU, fc2, residual, post-LayerNorm."""

    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(F.gelu(self.fc1(x))) + x)  # BERT "gelu" = exact (erf) GELU


class TaggingLayer(nn.Module):
    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        self.cross_attn = TaggingCrossAttention(cfg.head_hidden, cfg.joint_dim, cfg.head_heads, cfg.head_norm_eps)
        self.mlp = TaggingMlp(cfg.head_hidden, cfg.head_intermediate, cfg.head_norm_eps)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.cross_attn(x, image))


class TaggingHead(nn.Module):
    """label queries [B, T, hidden] x image tokens [B, L, joint_dim] -> [B, T, hidden]."""

    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TaggingLayer(cfg) for _ in range(cfg.head_layers))

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            labels = layer(labels, image)
        return labels
