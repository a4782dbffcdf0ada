"""Grounding DINO's pre-processing: the image resize and normalisation, the caption, its BERT tokens
and the sub-sentence masks (plain Python and torch, outside the exported graph).

The caption BuboGPT sends is the RAM tags joined with "," (no space), lower-cased, stripped, with a "."
appended (app.py `','.join(tags)` -> grounding_model.prompt2mask2 -> inference.preprocess_caption).

"Sub-sentence" text attention (official `generate_masks_with_special_tokens_and_transfer_map`): the
special tokens [CLS] [SEP] . ? split the caption into pieces; a token attends only to the tokens of its
own piece (the piece includes its closing special token), and position ids restart at 0 in every piece.
Commas are NOT special, so BuboGPT's "dog,cat." is one piece: [CLS] | dog , cat . | [SEP].
These masks are computed here and fed to the network as inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from bubogpt.grounding.grounding_dino.config import SPECIAL_TOKENS, GroundingDinoConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Image
# --------------------------------------------------------------------------------------------------


def resized_size(width: int, height: int, size: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) after the official RandomResize([size], max_size) (datasets/transforms.resize)."""
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def preprocess_image(image: Image.Image, cfg: GroundingDinoConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB PIL image -> (pixels [1, 3, h, w] normalised, (h, w)).

    Resize as torchvision's F.resize on a PIL image (PIL bilinear, which antialiases when shrinking),
    then ToTensor (/255) and Normalize with the ImageNet statistics.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    height, width = resized_size(image.width, image.height, cfg.image_size, cfg.max_image_size)
    resized = image.resize((width, height), Image.BILINEAR)
    array = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(cfg.pixel_mean).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std).view(3, 1, 1)
    return ((array - mean) / std)[None], (height, width)


# --------------------------------------------------------------------------------------------------
# Caption and tokens
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
