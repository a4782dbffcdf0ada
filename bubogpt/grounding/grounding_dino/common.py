"""Small pieces used across Grounding DINO (official utils.py and position_encoding.py): the box MLP,
the clamped logit, sine position embeddings and the contrastive (query . text) logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (height, width) of each feature level: Python ints in eager mode, traced scalars during export.
SpatialShapes = list[tuple[torch.Tensor | int, torch.Tensor | int]]


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
    return pad_text_logits(logits, max_text_len)


def pad_text_logits(logits: torch.Tensor, max_text_len: int) -> torch.Tensor:
    """[B, Q, T] -> [B, Q, max_text_len], -inf after the text (and cut to max_text_len if T is longer)."""
    filler = torch.full_like(logits[:, :, :1], float("-inf")).expand(-1, -1, max_text_len)
    return torch.cat((logits, filler), dim=-1)[:, :, :max_text_len]
