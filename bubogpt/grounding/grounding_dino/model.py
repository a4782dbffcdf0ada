"""The Grounding DINO network (Swin-T OGC), inference path, and its ONNX interface.

Network (names as the official code, so the checkpoint loads by an explicit, mostly 1:1 key map):
  backbone        Swin-T, stages 1-3 (strides 8, 16, 32) normed        official `backbone.0`
  input_proj      1x1 conv + GroupNorm per level, + a 3x3 stride-2 conv level (4 levels, 256 ch)
  bert, feat_map  BERT-base with sub-sentence masks, Linear(768 -> 256)
  transformer     feature enhancer (fusion, text self-attn, deformable self-attn) x6,
                  language-guided query selection (900), decoder x6 (self, text, deformable attn)
  bbox_embed      one box MLP shared by every decoder layer                official `bbox_embed.0`
  class logits    dot product of the queries with the enhanced text tokens (no parameters),
                  -inf outside the caption's tokens, padded with -inf to max_text_len

forward() is a fixed graph (no data-dependent Python control flow) that exports to ONNX with dynamic
batch, image height/width and text length. `forward_with_aux` is the training form: the same
computation, returning a dict that adds every earlier decoder layer's and the query-selection
proposals' predictions (the targets of DETR-style auxiliary losses).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bubogpt.grounding.grounding_dino.backbone import SwinBackbone
from bubogpt.grounding.grounding_dino.common import (
    MLP,
    contrastive_logits,
    inverse_sigmoid,
    pad_text_logits,
    sine_embed_scalar,
    sine_position_embedding,
)
from bubogpt.grounding.grounding_dino.config import GroundingDinoConfig
from bubogpt.grounding.grounding_dino.text_encoder import BertTextEncoder
from bubogpt.grounding.grounding_dino.transformer import Transformer

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
        self.config = cfg
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
        # No flag parameter here: torch.onnx.export appends every defaulted parameter of forward to the
        # traced inputs, where a Python bool cannot go; the training outputs have forward_with_aux.
        srcs, pos, text, text_token_mask, text_allowed, text_pos = self._transformer_inputs(
            pixels, input_ids, attention_mask, token_type_ids, text_self_attention_masks, position_ids
        )
        hs, reference, text = self.transformer(
            srcs, pos, text, text_token_mask, ~text_allowed, text_pos, self.bbox_embed
        )
        return self.prediction_head(hs, reference, text, text_token_mask)

    def forward_with_aux(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        text_self_attention_masks: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> dict[str, Any]:
        """forward's computation, also returning what DETR-style training supervises (same inputs).

        -> {"pred_logits", "pred_boxes"}: exactly forward's two outputs (the final decoder layer),
           "aux": [{"pred_logits", "pred_boxes"}] of every earlier decoder layer, first layer first,
           "enc": {"pred_logits", "pred_boxes"} of the query-selection proposals: logits [B, Q,
                  max_text_len] (-inf outside the caption's tokens), boxes = the decoder's initial
                  references (cx, cy, w, h in [0, 1]).
        """
        srcs, pos, text, text_token_mask, text_allowed, text_pos = self._transformer_inputs(
            pixels, input_ids, attention_mask, token_type_ids, text_self_attention_masks, position_ids
        )
        out = self.transformer(srcs, pos, text, text_token_mask, ~text_allowed, text_pos, self.bbox_embed, aux=True)
        layers = [
            dict(zip(("pred_logits", "pred_boxes"), self.prediction_head(hs, reference, out.text, text_token_mask)))
            for hs, reference in zip(out.layer_outputs, out.layer_references)
        ]
        return {
            **layers[-1],
            "aux": layers[:-1],
            "enc": {
                "pred_logits": pad_text_logits(out.proposal_logits, self.max_text_len),
                "pred_boxes": out.proposal_boxes_unsigmoid.sigmoid(),
            },
        }

    def _transformer_inputs(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        text_self_attention_masks: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image levels, their position embeddings, BERT text in the model width, text token mask,
        sub-sentence "may attend" mask, text position embedding): the text and image encoders' outputs."""
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
            sine_position_embedding(src.shape[2], src.shape[3], self.hidden // 2, self.config.pe_temperature, src.device)
            for src in srcs
        ]
        return srcs, pos, text, text_token_mask, text_allowed, text_pos

    def prediction_head(
        self, hs: torch.Tensor, reference: torch.Tensor, text: torch.Tensor, text_token_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder output [B, Q, d] and its reference boxes -> (pred_logits, pred_boxes), as forward."""
        pred_boxes = (self.bbox_embed(hs) + inverse_sigmoid(reference)).sigmoid()
        pred_logits = contrastive_logits(hs, text, text_token_mask, self.max_text_len)
        return pred_logits, pred_boxes
