"""Grounding DINO's text side: the caption, its BERT tokens, the sub-sentence masks, the BERT encoder.

The caption BuboGPT sends is the RAM tags joined with "," (no space), lower-cased, stripped, with a "."
appended (app.py `','.join(tags)` -> grounding_model.prompt2mask2 -> inference.preprocess_caption).

"Sub-sentence" text attention (official `generate_masks_with_special_tokens_and_transfer_map`): the
special tokens [CLS] [SEP] . ? split the caption into pieces; a token attends only to the tokens of its
own piece (the piece includes its closing special token), and position ids restart at 0 in every piece.
Commas are NOT special, so BuboGPT's "dog,cat." is one piece: [CLS] | dog , cat . | [SEP].
These masks are computed here, in pre-processing, and fed to the network as inputs.

The BERT module mirrors Hugging Face `BertModel` names (embeddings.*, encoder.layer.N.*) so the
checkpoint's `bert.*` keys load one to one; the pooler is not built (Grounding DINO never uses it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.gdino_config import SPECIAL_TOKENS, BertTextConfig, GroundingDinoConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Caption and tokens (pre-processing, plain Python)
# --------------------------------------------------------------------------------------------------


def preprocess_caption(caption: str) -> str:
    """The official `preprocess_caption`: lower-case, strip, end with "."."""
    caption = caption.lower().strip()
    return caption if caption.endswith(".") else caption + "."


def caption_from_tags(tags: Sequence[str]) -> str:
    """RAM tags -> the detector prompt exactly as BuboGPT builds it: "dog,cat,red car."."""
    return preprocess_caption(",".join(tags))


def load_tokenizer(text_encoder_dir: str | Path):
    """The BERT WordPiece tokenizer of a local directory (vocab.txt [+ tokenizer_config.json]); no hub."""
    from transformers import BertTokenizer  # tokenizers-backed (the official used AutoTokenizer -> fast BERT)

    directory = Path(text_encoder_dir)
    if not (directory / "vocab.txt").is_file() and not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no vocab.txt or tokenizer.json in text encoder directory {directory}")
    return BertTokenizer.from_pretrained(str(directory), local_files_only=True)


def special_token_ids(tokenizer) -> list[int]:
    """Ids of [CLS] [SEP] . ? — refused if the vocabulary lacks one (it would map to [UNK])."""
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    unk = tokenizer.unk_token_id
    absent = [tok for tok, i in zip(SPECIAL_TOKENS, ids) if i is None or (i == unk and tok != tokenizer.unk_token)]
    if absent:
        raise ValueError(f"tokenizer vocabulary lacks the sub-sentence tokens {absent}")
    return list(ids)


def sub_sentence_masks(input_ids: torch.Tensor, special_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_self_attention_masks [B, T, T] bool, position_ids [B, T] long), as the official computes them.

    Walks the special tokens in row-major order. A special token at the first or last column only sees
    itself (position 0); any other one closes the piece that starts after the previous special token.
    Tokens outside any piece (padding) see only themselves, position 0. Like the official loop, the
    "previous special token" carries over between rows (harmless: every row starts with [CLS]).
    """
    batch, num_tokens = input_ids.shape
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    masks = torch.eye(num_tokens, dtype=torch.bool).repeat(batch, 1, 1)
    position_ids = torch.zeros(batch, num_tokens, dtype=torch.long)
    previous = 0
    for row, col in special.nonzero().tolist():
        if col == 0 or col == num_tokens - 1:
            masks[row, col, col] = True
            position_ids[row, col] = 0
        else:
            masks[row, previous + 1 : col + 1, previous + 1 : col + 1] = True
            position_ids[row, previous + 1 : col + 1] = torch.arange(col - previous)
        previous = col
    return masks, position_ids


class GroundingText(NamedTuple):
    """The network's text inputs, in forward() order after the pixels."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 = real token
    token_type_ids: torch.Tensor  # [B, T] long
    text_self_attention_masks: torch.Tensor  # [B, T, T] bool, True = may attend
    position_ids: torch.Tensor  # [B, T] long


def tokenize(caption: str | Sequence[str], tokenizer, cfg: GroundingDinoConfig) -> GroundingText:
    """Caption(s) -> the five text tensors, as the official forward builds them.

    Each caption goes through `preprocess_caption` first (the official `predict` does, and it is
    idempotent). Tokens are padded to the longest caption; masks and position ids are computed on the
    full length, then everything is cut to `cfg.max_text_len` (the official order of operations).
    """
    captions = [caption] if isinstance(caption, str) else list(caption)
    captions = [preprocess_caption(c) for c in captions]
    encoded = tokenizer(captions, padding="longest", return_tensors="pt")
    input_ids = encoded["input_ids"].long()
    attention_mask = encoded["attention_mask"].long()
    token_type_ids = encoded.get("token_type_ids")
    token_type_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids.long()
    masks, position_ids = sub_sentence_masks(input_ids, special_token_ids(tokenizer))
    keep = cfg.max_text_len
    if input_ids.shape[1] > keep:
        log.warning("caption has %d tokens; keeping the first %d (max_text_len)", input_ids.shape[1], keep)
    return GroundingText(
        input_ids=input_ids[:, :keep],
        attention_mask=attention_mask[:, :keep],
        token_type_ids=token_type_ids[:, :keep],
        text_self_attention_masks=masks[:, :keep, :keep],
        position_ids=position_ids[:, :keep],
    )


# --------------------------------------------------------------------------------------------------
# BERT (names as Hugging Face BertModel)
# --------------------------------------------------------------------------------------------------


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
