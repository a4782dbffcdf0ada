"""Grounding DINO's transformer: feature enhancer, language-guided query selection, decoder.

Mirrors groundingdino/models/GroundingDINO/{transformer,transformer_vanilla}.py for inference with
unpadded images, keeping the official module and parameter names (the checkpoint's `transformer.*`
keys load one to one). Inference-only simplifications:

- No image padding masks: every image of a batch has the same size and fills it, so the official
  `key_padding_mask` is all False, `valid_ratios` all 1 and masking by them is a no-op (dropped).
- The text enhancer's sub-sentence mask is applied per sample. The official repeats a [B, T, T] mask
  with `repeat(nhead, 1, 1)` where nn.MultiheadAttention expects batch-major order, which pairs heads
  with other samples' masks when B > 1; at batch size 1 (the official `predict`) both agree.
- Spatial shapes stay Python/traced values taken from tensor shapes (never a data tensor), and grids
  come from arange instead of linspace (same values), so ONNX export keeps H and W dynamic.

`Transformer.forward(..., aux=True)` also returns what training supervises (every decoder layer and
the query-selection proposals; `GroundingDino.forward_with_aux`); the default returns only what
inference needs, which is the exported graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.grounding_dino.attention import (
    BiMultiHeadAttention,
    MultiheadAttention,
    MultiScaleDeformableAttention,
)
from bubogpt.grounding.grounding_dino.common import (
    MLP,
    SpatialShapes,
    contrastive_logits,
    inverse_sigmoid,
    sine_embed_boxes,
)
from bubogpt.grounding.grounding_dino.config import GroundingDinoConfig

# --------------------------------------------------------------------------------------------------
# Feature enhancer (official TransformerEncoder with text_layers and fusion_layers)
# --------------------------------------------------------------------------------------------------


class BiAttentionBlock(nn.Module):
    """Pre-norm bi-directional image-text attention with layer scale (gamma_v, gamma_l)."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, init_values: float) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))

    def forward(
        self, v: torch.Tensor, l: torch.Tensor, text_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # as the official: the residual is taken AFTER the layer norm
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(l)
        delta_v, delta_l = self.attn(v, l, text_padding)
        return v + self.gamma_v * delta_v, l + self.gamma_l * delta_l


class TextEnhancerLayer(nn.Module):
    """Official transformer_vanilla.TransformerEncoderLayer (post-norm, ReLU) over the text tokens."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, text: torch.Tensor, blocked: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = text + pos
        text = self.norm1(text + self.self_attn(q, k, text, blocked))
        return self.norm2(text + self.linear2(F.relu(self.linear1(text))))


class DeformableTransformerEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points, box_reference=False)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: SpatialShapes
    ) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


def encoder_reference_points(spatial_shapes: SpatialShapes, num_levels: int, device: torch.device) -> torch.Tensor:
    """Official get_reference_points with valid ratios 1: pixel centres of every level, [1, S, L, 2] (x, y)."""
    points = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        ref_y = ys[:, None].expand(-1, xs.shape[0])
        ref_x = xs[None, :].expand(ys.shape[0], -1)
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)[None, :, None, :].expand(-1, -1, num_levels, -1)


class TransformerEncoder(nn.Module):
    """Per layer: image-text fusion, then text self-attention, then deformable image self-attention."""

    def __init__(self, cfg: GroundingDinoConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.num_levels = cfg.num_feature_levels
        self.layers = nn.ModuleList(
            DeformableTransformerEncoderLayer(
                d, cfg.dim_feedforward, cfg.num_feature_levels, cfg.num_heads, cfg.enc_n_points
            )
            for _ in range(cfg.num_encoder_layers)
        )
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(d, cfg.text_heads, cfg.dim_feedforward // 2) for _ in range(cfg.num_encoder_layers)
        )
        self.fusion_layers = nn.ModuleList(
            BiAttentionBlock(d, d, cfg.fusion_dim, cfg.text_heads, cfg.fusion_init_values)
            for _ in range(cfg.num_encoder_layers)
        )

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        spatial_shapes: SpatialShapes,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        text_blocked: torch.Tensor,
        text_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        reference_points = encoder_reference_points(spatial_shapes, self.num_levels, src.device)
        for layer, text_layer, fusion in zip(self.layers, self.text_layers, self.fusion_layers):
            src, text = fusion(src, text, text_padding)
            text = text_layer(text, text_blocked, text_pos)
            src = layer(src, pos, reference_points, spatial_shapes)
        return src, text


# --------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention -> text cross-attention -> deformable image cross-attention -> FFN (all post-norm)."""

    def __init__(self, d_model: int, d_ffn: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points, box_reference=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ca_text = MultiheadAttention(d_model, num_heads)
        self.catext_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(q, k, tgt))
        tgt = self.catext_norm(tgt + self.ca_text(tgt + query_pos, text, text, text_padding[:, None, :]))
        tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class TransformerDecoder(nn.Module):
    """Decoder layers with iterative box refinement by the (shared) box MLP, which the caller passes in."""

    def __init__(self, cfg: GroundingDinoConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.hidden = d
        self.num_levels = cfg.num_feature_levels
        self.layers = nn.ModuleList(
            DeformableTransformerDecoderLayer(
                d, cfg.dim_feedforward, cfg.num_feature_levels, cfg.num_heads, cfg.dec_n_points
            )
            for _ in range(cfg.num_decoder_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(2 * d, d, d, 2)

    def forward(
        self,
        tgt: torch.Tensor,
        refpoints_unsigmoid: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: SpatialShapes,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        bbox_embed: MLP,
        every_layer: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """-> (normed output of the last layer [B, Q, d], its input reference boxes [B, Q, 4] in [0, 1]).

        With `every_layer`, the same for every layer, as two lists (first layer first). The official
        returns every layer; only the last one feeds the final prediction, so by default the others are
        not normed. The refinement after the last layer is skipped (its result is never used).
        """
        reference = refpoints_unsigmoid.sigmoid()
        output = tgt
        num_layers = len(self.layers)
        outputs: list[torch.Tensor] = []
        references: list[torch.Tensor] = []
        for layer_id, layer in enumerate(self.layers):
            reference_input = reference[:, :, None, :].expand(-1, -1, self.num_levels, -1)  # x valid ratios (1)
            query_sine = sine_embed_boxes(reference, self.hidden // 2)
            query_pos = self.ref_point_head(query_sine)
            output = layer(output, query_pos, reference_input, text, text_padding, memory, spatial_shapes)
            if every_layer:
                outputs.append(self.norm(output))
                references.append(reference)
            if layer_id < num_layers - 1:
                reference = (bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()
        if every_layer:
            return outputs, references
        return self.norm(output), reference


# --------------------------------------------------------------------------------------------------
# Whole transformer
# --------------------------------------------------------------------------------------------------


def encoder_output_proposals(
    memory: torch.Tensor, spatial_shapes: SpatialShapes
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official gen_encoder_output_proposals without padding: a box (cell centre, 0.05 * 2^level) per
    memory token, as a logit; proposals touching the border band (outside (0.01, 0.99)) become +inf and
    their memory is zeroed."""
    proposals = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys = (torch.arange(height, dtype=torch.float32, device=memory.device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=memory.device) + 0.5) / width
        cx = xs[None, :].expand(ys.shape[0], -1).reshape(-1)
        cy = ys[:, None].expand(-1, xs.shape[0]).reshape(-1)
        wh = torch.full_like(cx, 0.05 * (2.0**level))
        proposals.append(torch.stack((cx, cy, wh, wh), dim=-1))
    proposals = torch.cat(proposals, dim=0)[None]  # [1, S, 4]
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(~valid, float("inf"))
    memory = memory.masked_fill(~valid, 0.0)
    return memory, proposals


class TransformerAuxOutputs(NamedTuple):
    """What `Transformer.forward(..., aux=True)` returns: every decoder layer and the query selection."""

    layer_outputs: list[torch.Tensor]  # normed output of each decoder layer [B, Q, d], first layer first
    layer_references: list[torch.Tensor]  # each layer's input reference boxes [B, Q, 4] in [0, 1]
    text: torch.Tensor  # enhanced text [B, T, d]
    proposal_logits: torch.Tensor  # the selected memory tokens' text logits [B, Q, T] (-inf outside the text)
    proposal_boxes_unsigmoid: torch.Tensor  # their boxes [B, Q, 4] as logits: the decoder's initial references


class Transformer(nn.Module):
    def __init__(self, cfg: GroundingDinoConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.num_queries = cfg.num_queries
        self.max_text_len = cfg.max_text_len
        self.encoder = TransformerEncoder(cfg)
        self.decoder = TransformerDecoder(cfg)
        self.level_embed = nn.Parameter(torch.randn(cfg.num_feature_levels, d))
        self.tgt_embed = nn.Embedding(cfg.num_queries, d)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        # two_stage_bbox_embed_share False: the query-selection box MLP is its own copy
        self.enc_out_bbox_embed = MLP(d, d, 4, 3)

    def forward(
        self,
        srcs: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        text: torch.Tensor,
        text_token_mask: torch.Tensor,
        text_blocked: torch.Tensor,
        text_pos: torch.Tensor,
        bbox_embed: MLP,
        aux: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | TransformerAuxOutputs:
        """-> (decoder output [B, Q, d], its reference boxes [B, Q, 4], enhanced text [B, T, d]).

        With `aux`, a TransformerAuxOutputs (every decoder layer and the selected proposals).
        """
        spatial_shapes: SpatialShapes = [(src.shape[2], src.shape[3]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        pos_flat = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[lvl][None, None] for lvl, pos in enumerate(pos_embeds)],
            dim=1,
        )
        text_padding = ~text_token_mask
        memory, text = self.encoder(src_flat, pos_flat, spatial_shapes, text, text_padding, text_blocked, text_pos)

        # language-guided query selection: the memory tokens whose best text similarity is highest
        output_memory, output_proposals = encoder_output_proposals(memory, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        memory_logits = contrastive_logits(output_memory, text, text_token_mask, None)
        scores = memory_logits.max(-1)[0]
        coords_unsigmoid = self.enc_out_bbox_embed(output_memory) + output_proposals
        topk = torch.topk(scores, self.num_queries, dim=1)[1]
        refpoints = torch.gather(coords_unsigmoid, 1, topk[..., None].expand(-1, -1, 4))
        # embed_init_tgt: content queries are learned embeddings, not the selected memory
        tgt = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)

        if not aux:
            hs, reference = self.decoder(tgt, refpoints, memory, spatial_shapes, text, text_padding, bbox_embed)
            return hs, reference, text
        outputs, references = self.decoder(
            tgt, refpoints, memory, spatial_shapes, text, text_padding, bbox_embed, every_layer=True
        )
        proposal_logits = torch.gather(memory_logits, 1, topk[..., None].expand(-1, -1, memory_logits.shape[-1]))
        return TransformerAuxOutputs(outputs, references, text, proposal_logits, refpoints)
