"""Grounding DINO's text encoder: BERT without pooler, names as Hugging Face `BertModel`.

The module mirrors HF names (embeddings.*, encoder.layer.N.*) so the checkpoint's `bert.*` keys load
one to one; the pooler is not built (Grounding DINO never uses it). It takes a per-token [B, T, T]
self-attention mask: the sub-sentence masks computed in pre-processing (`preprocessing.tokenize`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.grounding_dino.config import BertTextConfig


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.norm_eps)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(position_ids))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden // config.num_heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        out = scores.softmax(dim=-1) @ v
        return out.transpose(1, 2).reshape(x.shape)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, additive_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # BERT "gelu" is the exact (erf) GELU


class BertOutput(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, additive_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))


class BertTextEncoder(nn.Module):
    """BERT without pooler; takes a per-token [B, T, T] self-attention mask (the sub-sentence masks)."""

    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        self_attention_masks: torch.Tensor,
    ) -> torch.Tensor:
        """-> last hidden state [B, T, hidden]. `self_attention_masks` is bool, True = may attend."""
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        # HF's get_extended_attention_mask for a 3-D mask: (1 - mask) * finfo.min, broadcast over heads.
        # Every row keeps its diagonal, so no row is fully masked.
        blocked = (~self_attention_masks)[:, None].to(x.dtype)
        additive = blocked * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, additive)
        return x
