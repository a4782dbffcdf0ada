"""SAM's two-way transformer (official `transformer.TwoWayTransformer`): prompt tokens and image
embedding attend to each other. LayerNorm eps 1e-5, ReLU MLPs, as official."""

from __future__ import annotations

import math

import torch
from torch import nn

from bubogpt.grounding.sam.common import MLPBlock
from bubogpt.grounding.sam.config import SamConfig


class SamTwoWayAttention(nn.Module):
    """Attention with an optional down-projection of q/k/v (official `transformer.Attention`)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.internal_dim = embedding_dim // downsample_rate
        # sqrt(head dim) as a Python constant, so that tracing records no shape op for it
        self.scale_divisor = math.sqrt(self.internal_dim // num_heads)
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.num_heads, -1).transpose(1, 2)  # [B, heads, tokens, c]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = (q @ k.transpose(-2, -1)) / self.scale_divisor
        out = attn.softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).flatten(2))


class SamTwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(self, cfg: SamConfig, skip_first_layer_pe: bool) -> None:
        super().__init__()
        dim, heads, down = cfg.prompt_embed_dim, cfg.decoder_num_heads, cfg.decoder_attention_downsample_rate
        self.self_attn = SamTwoWayAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = SamTwoWayAttention(dim, heads, down)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, cfg.decoder_mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = SamTwoWayAttention(dim, heads, down)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            # The first layer's queries ARE the prompt embeddings: official replaces instead of adding.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class SamTwoWayTransformer(nn.Module):
    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        dim = cfg.prompt_embed_dim
        self.layers = nn.ModuleList(SamTwoWayAttentionBlock(cfg, i == 0) for i in range(cfg.decoder_depth))
        self.final_attn_token_to_image = SamTwoWayAttention(
            dim, cfg.decoder_num_heads, cfg.decoder_attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding [B, C, h, w], image_pe [1 or B, C, h, w], point_embedding [B, T, C]."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)  # broadcast over B (official repeats it)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
