"""BLIP-2 Q-Former, query path only, as MiniGPT-4 / BuboGPT run it.

BLIP-2's Q-Former is a BERT-base whose layers carry two feed-forward networks: one for text tokens and
one for the learned queries (`intermediate_query` / `output_query`), plus a cross-attention to the image
features on every `cross_attention_freq`-th layer. MiniGPT-4 and BuboGPT only ever feed the queries
(no text), with an all-ones encoder mask, so the word/position embeddings, the text FFNs and the LM head
are dead weight; they are not built here (the checkpoint loader ignores them by name).

Per layer (post-norm, BERT style, LayerNorm eps 1e-12):
    x = LN(x + SelfAttn(x))
    x = LN(x + CrossAttn(x, encoder_states))      # only on layers with idx % cross_attention_freq == 0
    x = LN(x + fc2(gelu(fc1(x))))                  # the "query" FFN

The same class serves the vision Q-Former (BLIP-2 weights, encoder width 1408) and the audio Q-Former
(BuboGPT weights, encoder width 768). Weights: `bubogpt.official_checkpoints`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.config import QFormerConfig


class QFormerAttention(nn.Module):
    """BERT attention block: separate q/k/v projections, output projection, residual, post-LayerNorm.

    Self-attention when called as attn(x, x); cross-attention when called with the encoder states as
    `context` (then k and v project from `kv_dim`).
    """

    def __init__(self, hidden: int, num_heads: int, kv_dim: int, eps: float) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(kv_dim, hidden)
        self.v_proj = nn.Linear(kv_dim, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(context))
        v = self._heads(self.v_proj(context))
        # No mask: BuboGPT's encoder mask is all ones, and BERT's additive mask is then exactly 0.
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(x.shape)
        return self.norm(self.out_proj(out) + x)


class QFormerMLP(nn.Module):
    """The queries' feed-forward block (`intermediate_query` + `output_query`), residual, post-LayerNorm."""

    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(F.gelu(self.fc1(x))) + x)  # BERT "gelu" is the exact (erf) GELU


class QFormerLayer(nn.Module):
    def __init__(self, config: QFormerConfig, has_cross_attention: bool) -> None:
        super().__init__()
        eps = config.norm_eps
        self.self_attn = QFormerAttention(config.hidden, config.num_heads, config.hidden, eps)
        # A structural (per-layer, fixed at build time) choice, not data-dependent control flow.
        self.cross_attn: QFormerAttention | None = (
            QFormerAttention(config.hidden, config.num_heads, config.encoder_width, eps)
            if has_cross_attention
            else None
        )
        self.mlp = QFormerMLP(config.hidden, config.intermediate, eps)

    def forward(self, x: torch.Tensor, encoder_states: torch.Tensor) -> torch.Tensor:
        x = self.self_attn(x, x)
        if self.cross_attn is not None:
            x = self.cross_attn(x, encoder_states)
        return self.mlp(x)


class QFormer(nn.Module):
    """encoder_states [B, L, encoder_width] -> query features [B, num_queries, hidden]."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_queries, config.hidden))
        # BERT's embedding LayerNorm; with no text it only normalises the query tokens.
        self.embed_norm = nn.LayerNorm(config.hidden, eps=config.norm_eps)
        self.layers = nn.ModuleList(
            QFormerLayer(config, has_cross_attention=(i % config.cross_attention_freq == 0))
            for i in range(config.num_layers)
        )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # BERT initialisation (std 0.02); real weights come from checkpoints.
        nn.init.normal_(self.query_tokens, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, encoder_states: torch.Tensor) -> torch.Tensor:
        # LayerNorm is per token, so normalising before broadcasting over the batch is the same maths.
        x = self.embed_norm(self.query_tokens).expand(encoder_states.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, encoder_states)
        return x
