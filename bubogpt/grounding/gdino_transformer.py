"""Grounding DINO's transformer: feature enhancer, language-guided query selection, decoder.

Mirrors groundingdino/models/GroundingDINO/{transformer,fuse_modules,ms_deform_attn,transformer_vanilla,
utils}.py for inference with unpadded images, keeping the official module and parameter names (the
checkpoint's `transformer.*` keys load one to one). Inference-only simplifications:

- No image padding masks: every image of a batch has the same size and fills it, so the official
  `key_padding_mask` is all False, `valid_ratios` all 1 and masking by them is a no-op (dropped).
- Multi-scale deformable attention is the official PyTorch fallback (`F.grid_sample`, float32 grids),
  which is also what ONNX can express (GridSample, opset >= 16); the CUDA kernel computes the same.
- Attention is written out (our `MultiheadAttention` keeps nn.MultiheadAttention's parameter names).
  The text enhancer's sub-sentence mask is applied per sample. The official repeats a [B, T, T] mask
  with `repeat(nhead, 1, 1)` where nn.MultiheadAttention expects batch-major order, which pairs heads
  with other samples' masks when B > 1; at batch size 1 (the official `predict`) both agree.
- Spatial shapes stay Python/traced values taken from tensor shapes (never a data tensor), and grids
  come from arange instead of linspace (same values), so ONNX export keeps H and W dynamic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.gdino_config import GroundingDinoConfig

SpatialShapes = list[tuple[torch.Tensor | int, torch.Tensor | int]]


# --------------------------------------------------------------------------------------------------
# Small shared pieces (official utils.py)
# --------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear layers with ReLU between them (official utils.MLP; names layers.N)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The official (clamped) logit."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _sin_cos_interleaved(x: torch.Tensor) -> torch.Tensor:
    """[..., F] -> [..., F] with sin on even and cos on odd features, interleaved (official stack+flatten)."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def _dim_t(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def sine_embed_scalar(positions: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Official get_sine_pos_embed for one coordinate (exchange_xy irrelevant): [...] -> [..., num_feats].

    The value is scaled by 2*pi as is (the text position ids are not normalised first).
    """
    x = positions.to(torch.float32)[..., None] * (2 * math.pi) / _dim_t(num_feats, temperature, positions.device)
    return _sin_cos_interleaved(x)


def sine_embed_boxes(boxes: torch.Tensor, num_feats: int) -> torch.Tensor:
    """Official gen_sineembed_for_position for [..., 4] (cx, cy, w, h) -> [..., 4 * num_feats], order y, x, w, h.

    The official hard-codes 128 features per coordinate (= d_model / 2 at d_model 256); we use hidden / 2.
    """
    dim_t = _dim_t(num_feats, 10000.0, boxes.device)
    scaled = boxes * (2 * math.pi)
    x, y, w, h = (_sin_cos_interleaved(scaled[..., i, None] / dim_t) for i in range(4))
    return torch.cat((y, x, w, h), dim=-1)


def sine_position_embedding(
    height: torch.Tensor | int, width: torch.Tensor | int, num_feats: int, temperature: float, device: torch.device
) -> torch.Tensor:
    """Official PositionEmbeddingSineHW (normalize=True, scale 2*pi) for an unpadded map: [1, 2F, H, W].

    With no padding the official cumsum of the not-mask is 1..H (1..W), divided by its last value + 1e-6.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = _dim_t(num_feats, temperature, device)
    pos_y = _sin_cos_interleaved(y[:, None] / dim_t)  # [H, F]
    pos_x = _sin_cos_interleaved(x[:, None] / dim_t)  # [W, F]
    pos_y = pos_y[:, None, :].expand(-1, pos_x.shape[0], -1)
    pos_x = pos_x[None, :, :].expand(pos_y.shape[0], -1, -1)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)[None]


def contrastive_logits(
    queries: torch.Tensor, text: torch.Tensor, text_token_mask: torch.Tensor, max_text_len: int | None
) -> torch.Tensor:
    """Official ContrastiveEmbed: dot products with the text tokens, -inf outside the valid text.

    With `max_text_len` the result is padded with -inf to that width (concatenate a full -inf block
    and keep the first max_text_len columns: no shape-dependent pad amount in the graph).
    """
    logits = queries @ text.transpose(-1, -2)
    logits = logits.masked_fill(~text_token_mask[:, None, :], float("-inf"))
    if max_text_len is None:
        return logits
    filler = torch.full_like(logits[:, :, :1], float("-inf")).expand(-1, -1, max_text_len)
    return torch.cat((logits, filler), dim=-1)[:, :, :max_text_len]


# --------------------------------------------------------------------------------------------------
# Attentions
# --------------------------------------------------------------------------------------------------


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Official multi_scale_deformable_attn_pytorch.

    value [B, S, heads, D]; sampling_locations [B, Q, heads, L, P, 2] in [0, 1]; attention_weights
    [B, Q, heads, L, P] -> [B, Q, heads * D]. Bilinear, zeros outside, align_corners False.
    """
    batch, _, num_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    num_levels, num_points = sampling_locations.shape[3], sampling_locations.shape[4]
    grids = 2 * sampling_locations - 1
    sampled = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        end = start + height * width
        value_l = value[:, start:end].flatten(2).transpose(1, 2).reshape(-1, head_dim, height, width)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*heads, Q, P, 2]
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
        start = end
    weights = attention_weights.transpose(1, 2).reshape(-1, 1, num_queries, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*heads, D, Q]
    return out.reshape(batch, num_heads * head_dim, num_queries).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Official ms_deform_attn.MultiScaleDeformableAttention (batch first)."""

    def __init__(self, embed_dim: int, num_heads: int, num_levels: int, num_points: int, box_reference: bool) -> None:
        super().__init__()
        # the encoder samples around points ([..., 2]), the decoder inside boxes ([..., 4]); the official
        # branches on the reference's last dimension, we fix it at build time (no traced shape test)
        self.box_reference = box_reference
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        """query [B, Q, C]; value [B, S, C]; reference_points [B, Q, L, 2] (points) or [B, Q, L, 4] (boxes)."""
        batch, num_queries = query.shape[0], query.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value)
        value = value.reshape(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).reshape(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).reshape(batch, num_queries, heads, levels * points).softmax(-1)
        weights = weights.reshape(batch, num_queries, heads, levels, points)
        if self.box_reference:
            # offsets are relative to the box size: ref_xy + offset / points * ref_wh / 2
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            # offsets are in pixels of each level: divide x by the level's W and y by its H (sizes are
            # ints in eager mode and traced scalars during export, so no constant (W, H) table)
            per_level = [
                torch.stack((offsets[:, :, :, level, :, 0] / width, offsets[:, :, :, level, :, 1] / height), dim=-1)
                for level, (height, width) in enumerate(spatial_shapes)
            ]
            locations = reference_points[:, :, None, :, None, :] + torch.stack(per_level, dim=3)
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights))


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight/bias, out_proj), batch first, masks explicit."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, Lq, C], key/value [B, Lk, C]; `blocked` bool, True = may not attend, broadcastable
        to [B, Lq, Lk] (a [B, Lq, Lk] attn mask or a [B, 1, Lk] key padding mask)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        scores = (q * self.head_dim**-0.5) @ k.transpose(-1, -2)
        if blocked is not None:
            scores = scores.masked_fill(blocked[:, None], float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1))


class BiMultiHeadAttention(nn.Module):
    """Official fuse_modules.BiMultiHeadAttention: image->text and text->image attention from one score map."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, E] -> [B * heads, L, head_dim] (the official bmm layout)."""
        batch, length = x.shape[0], x.shape[1]
        x = x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        return x.reshape(-1, length, self.head_dim)

    def _merge(self, x: torch.Tensor, batch: torch.Tensor | int) -> torch.Tensor:
        length = x.shape[1]
        return x.reshape(batch, self.num_heads, length, self.head_dim).transpose(1, 2).reshape(batch, length, -1)

    def forward(
        self, v: torch.Tensor, l: torch.Tensor, text_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v [B, N_img, v_dim], l [B, N_text, l_dim], text_padding [B, N_text] bool (True = padding)."""
        batch = v.shape[0]
        query = self._heads(self.v_proj(v) * self.scale)
        key = self._heads(self.l_proj(l))
        value_v = self._heads(self.values_v_proj(v))
        value_l = self._heads(self.values_l_proj(l))
        scores = torch.bmm(query, key.transpose(1, 2))  # [B*heads, N_img, N_text]
        # the official stabilisation, kept for identical numerics: a global max (over the whole batch),
        # then clamps meant for fp16
        scores = (scores - scores.max()).clamp(min=-50000, max=50000)
        scores_l = scores.transpose(1, 2)
        scores_l = (scores_l - scores_l.max(dim=-1, keepdim=True)[0]).clamp(min=-50000, max=50000)
        # text -> image: no image padding, nothing to mask
        attn_l = scores_l.softmax(dim=-1)
        # image -> text: padding tokens masked
        padding = text_padding[:, None, None, :].expand(-1, self.num_heads, -1, -1).flatten(0, 1)
        attn_v = scores.masked_fill(padding, float("-inf")).softmax(dim=-1)
        out_v = self._merge(torch.bmm(attn_v, value_l), batch)
        out_l = self._merge(torch.bmm(attn_l, value_v), batch)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (normed output of the last layer [B, Q, d], its input reference boxes [B, Q, 4] in [0, 1]).

        The official returns every layer; only the last one feeds the final prediction. The refinement
        after the last layer is skipped (its result is never used).
        """
        reference = refpoints_unsigmoid.sigmoid()
        output = tgt
        num_layers = len(self.layers)
        for layer_id, layer in enumerate(self.layers):
            reference_input = reference[:, :, None, :].expand(-1, -1, self.num_levels, -1)  # x valid ratios (1)
            query_sine = sine_embed_boxes(reference, self.hidden // 2)
            query_pos = self.ref_point_head(query_sine)
            output = layer(output, query_pos, reference_input, text, text_padding, memory, spatial_shapes)
            if layer_id < num_layers - 1:
                reference = (bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()
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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (decoder output [B, Q, d], its reference boxes [B, Q, 4], enhanced text [B, T, d])."""
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
        scores = contrastive_logits(output_memory, text, text_token_mask, None).max(-1)[0]
        coords_unsigmoid = self.enc_out_bbox_embed(output_memory) + output_proposals
        topk = torch.topk(scores, self.num_queries, dim=1)[1]
        refpoints = torch.gather(coords_unsigmoid, 1, topk[..., None].expand(-1, -1, 4))
        # embed_init_tgt: content queries are learned embeddings, not the selected memory
        tgt = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)

        hs, reference = self.decoder(tgt, refpoints, memory, spatial_shapes, text, text_padding, bbox_embed)
        return hs, reference, text
