"""Grounding DINO's attentions: multi-scale deformable attention (official ms_deform_attn.py), the
written-out multi-head attention (nn.MultiheadAttention's parameters) and the bi-directional
image-text attention of the feature fusion (official fuse_modules.py).

Multi-scale deformable attention is the official PyTorch fallback (`F.grid_sample`, float32 grids),
which is also what ONNX can express (GridSample, opset >= 16); the CUDA kernel computes the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.grounding_dino.common import SpatialShapes


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
