"""Grounding DINO (Swin-T OGC), inference path: the detector BuboGPT prompts with the RAM tags.

    image --preprocess_image--> pixels            tags --caption_from_tags--> "dog,cat." --tokenize--> text
                                  \\                                                                  /
                                   GroundingDino.forward(pixels, *text) -> (pred_logits, pred_boxes)
                                                        |
                              postprocess -> [(phrase, score, box_xyxy in original pixels), ...]

forward() is a fixed graph (no data-dependent Python control flow) that exports to ONNX with dynamic
batch, image height/width and text length; pre- and post-processing are plain Python around it.

Network (names as the official code, so the checkpoint loads by an explicit, mostly 1:1 key map):
  backbone        Swin-T, stages 1-3 (strides 8, 16, 32) normed        official `backbone.0`
  input_proj      1x1 conv + GroupNorm per level, + a 3x3 stride-2 conv level (4 levels, 256 ch)
  bert, feat_map  BERT-base with sub-sentence masks, Linear(768 -> 256)
  transformer     feature enhancer (fusion, text self-attn, deformable self-attn) x6,
                  language-guided query selection (900), decoder x6 (self, text, deformable attn)
  bbox_embed      one box MLP shared by every decoder layer                official `bbox_embed.0`
  class logits    dot product of the queries with the enhanced text tokens (no parameters),
                  -inf outside the caption's tokens, padded with -inf to max_text_len

Batches must hold equally sized images (the official pads mixed sizes and masks the padding; serving
resizes each image on its own and runs it alone or with same-size images, so no padding masks here).

Comparing backends: query selection takes the top 900 of ~18k encoder scores, and queries are slots
(learned content per rank), so scores tied to ~1e-5 may swap ranks and move every output a little
through the decoder's self-attention. At 800 px even torch vs torch (batch 2 vs 1) differs this way.
Compare raw outputs on small images (few tokens), and detections after thresholds at full size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from bubogpt.grounding.gdino_config import GDINO_PRESETS, GroundingDinoConfig
from bubogpt.grounding.gdino_swin import SwinBackbone
from bubogpt.grounding.gdino_text import (
    BertTextEncoder,
    GroundingText,
    caption_from_tags,
    load_tokenizer,
    preprocess_caption,
    sub_sentence_masks,
    tokenize,
)
from bubogpt.grounding.gdino_transformer import (
    MLP,
    Transformer,
    contrastive_logits,
    inverse_sigmoid,
    sine_embed_scalar,
    sine_position_embedding,
)

__all__ = [
    "GDINO_PRESETS",
    "ONNX_DYNAMIC_AXES",
    "ONNX_INPUT_NAMES",
    "ONNX_OUTPUT_NAMES",
    "Detection",
    "GroundingDino",
    "GroundingDinoConfig",
    "GroundingText",
    "caption_from_tags",
    "ground",
    "load_tokenizer",
    "postprocess",
    "preprocess_caption",
    "preprocess_image",
    "build_grounding_dino",
    "resized_size",
    "sub_sentence_masks",
    "tokenize",
]


# ONNX interface of GroundingDino.forward: names in argument order, and the axes that stay dynamic.
ONNX_INPUT_NAMES = (
    "pixels",
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "text_self_attention_masks",
    "position_ids",
)
ONNX_OUTPUT_NAMES = ("pred_logits", "pred_boxes")
ONNX_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "pixels": {0: "batch", 2: "height", 3: "width"},
    "input_ids": {0: "batch", 1: "tokens"},
    "attention_mask": {0: "batch", 1: "tokens"},
    "token_type_ids": {0: "batch", 1: "tokens"},
    "text_self_attention_masks": {0: "batch", 1: "tokens", 2: "tokens"},
    "position_ids": {0: "batch", 1: "tokens"},
    "pred_logits": {0: "batch"},
    "pred_boxes": {0: "batch"},
}


class GroundingDino(nn.Module):
    def __init__(self, cfg: GroundingDinoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden = cfg.hidden
        self.max_text_len = cfg.max_text_len
        self.backbone = SwinBackbone(cfg.swin)
        # input projections: one per backbone level, then stride-2 3x3 convs for the extra levels
        in_channels = list(cfg.swin.out_channels)
        projections = [
            nn.Sequential(nn.Conv2d(c, cfg.hidden, kernel_size=1), nn.GroupNorm(cfg.group_norm_groups, cfg.hidden))
            for c in in_channels
        ]
        extra_in = in_channels[-1]
        for _ in range(cfg.num_feature_levels - len(in_channels)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(extra_in, cfg.hidden, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(cfg.group_norm_groups, cfg.hidden),
                )
            )
            extra_in = cfg.hidden
        self.input_proj = nn.ModuleList(projections)
        self.bert = BertTextEncoder(cfg.text)
        self.feat_map = nn.Linear(cfg.text.hidden, cfg.hidden)
        self.transformer = Transformer(cfg)
        self.bbox_embed = MLP(cfg.hidden, cfg.hidden, 4, 3)

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        text_self_attention_masks: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B, 3, H, W] normalised; text tensors from `tokenize` (T <= max_text_len).

        The image must give at least num_queries feature tokens over the 4 levels (strides 8..64),
        which any `preprocess_image` output does (short side 800 for the official preset).

        -> pred_logits [B, Q, max_text_len] (raw logits, -inf outside the caption's tokens),
           pred_boxes [B, Q, 4] (cx, cy, w, h normalised to the image).
        """
        text_token_mask = attention_mask.bool()
        text_allowed = text_self_attention_masks.bool()
        text = self.feat_map(self.bert(input_ids, token_type_ids, position_ids, text_allowed))
        # the text enhancer's position embedding of the sub-sentence position ids (official: 256 = d_model feats)
        text_pos = sine_embed_scalar(position_ids, self.hidden)

        features = self.backbone(pixels)
        srcs = [proj(feature) for proj, feature in zip(self.input_proj, features)]
        for level in range(len(features), len(self.input_proj)):
            # the first extra level convolves the last backbone map, later ones the previous extra level
            srcs.append(self.input_proj[level](features[-1] if level == len(features) else srcs[-1]))
        pos = [
            sine_position_embedding(src.shape[2], src.shape[3], self.hidden // 2, self.cfg.pe_temperature, src.device)
            for src in srcs
        ]

        hs, reference, text = self.transformer(
            srcs, pos, text, text_token_mask, ~text_allowed, text_pos, self.bbox_embed
        )
        pred_boxes = (self.bbox_embed(hs) + inverse_sigmoid(reference)).sigmoid()
        pred_logits = contrastive_logits(hs, text, text_token_mask, self.max_text_len)
        return pred_logits, pred_boxes


# --------------------------------------------------------------------------------------------------
# Pre-processing
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
# Post-processing
# --------------------------------------------------------------------------------------------------


class Detection(NamedTuple):
    phrase: str
    score: float
    box_xyxy: tuple[float, float, float, float]  # pixels of the original image


def postprocess(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    input_ids: torch.Tensor | Sequence[int],
    tokenizer,
    original_hw: tuple[int, int],
    box_threshold: float = 0.25,
    text_threshold: float = 0.2,
) -> list[Detection]:
    """One image's outputs -> detections, as the official `predict` + `get_phrases_from_posmap`.

    pred_logits [Q, L] or [1, Q, L]; pred_boxes [Q, 4] or [1, Q, 4]; input_ids [T] or [1, T].
    A query is kept when its best token probability (sigmoid) exceeds `box_threshold`; its phrase is
    the decoded tokens whose probability exceeds `text_threshold`, never the first token ([CLS]) nor
    any from index L - 1 on (the official right_idx 255 for L 256), with "." removed; its score is the
    best token probability. Boxes go from normalised cx, cy, w, h to x0, y0, x1, y1 in the original
    image's pixels (BuboGPT scales by [W, H, W, H]; the resize keeps the aspect ratio up to rounding).
    """
    if pred_logits.dim() == 3:
        if pred_logits.shape[0] != 1:
            raise ValueError("postprocess takes one image; index the batch first")
        pred_logits, pred_boxes = pred_logits[0], pred_boxes[0]
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError("postprocess takes one image's input_ids; index the batch first")
        ids = ids[0]
    ids = ids.tolist()
    probs = pred_logits.detach().float().cpu().sigmoid()
    boxes = pred_boxes.detach().float().cpu()
    keep = probs.max(dim=1)[0] > box_threshold
    right_idx = probs.shape[1] - 1
    height, width = original_hw
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    detections = []
    for prob, box in zip(probs[keep], boxes[keep]):
        posmap = prob > text_threshold
        posmap[0] = False
        posmap[right_idx:] = False
        token_ids = [ids[i] for i in posmap.nonzero(as_tuple=True)[0].tolist() if i < len(ids)]
        phrase = tokenizer.decode(token_ids, clean_up_tokenization_spaces=True).replace(".", "")
        box = box * scale
        x0, y0 = box[0] - box[2] / 2, box[1] - box[3] / 2
        detections.append(
            Detection(phrase, float(prob.max()), (float(x0), float(y0), float(x0 + box[2]), float(y0 + box[3])))
        )
    return detections


@torch.no_grad()
def ground(
    model: GroundingDino,
    tokenizer,
    image: Image.Image,
    caption: str,
    box_threshold: float = 0.25,
    text_threshold: float = 0.2,
) -> list[Detection]:
    """Reference path for one image: preprocess, forward, postprocess (BuboGPT's thresholds by default)."""
    device = next(model.parameters()).device
    pixels, _ = preprocess_image(image, model.cfg)
    text = tokenize(caption, tokenizer, model.cfg)
    logits, boxes = model(pixels.to(device), *(t.to(device) for t in text))
    original_hw = (image.height, image.width)
    return postprocess(logits, boxes, text.input_ids, tokenizer, original_hw, box_threshold, text_threshold)


def build_grounding_dino(
    preset: str | GroundingDinoConfig = "swint_ogc", text_encoder_dir: str | Path | None = None
) -> GroundingDino:
    """A randomly initialised model; with `text_encoder_dir` the BERT sizes come from its config.json."""
    cfg = GDINO_PRESETS[preset] if isinstance(preset, str) else preset
    if text_encoder_dir is not None:
        cfg = cfg.with_text_encoder_dir(text_encoder_dir)
    return GroundingDino(cfg)
