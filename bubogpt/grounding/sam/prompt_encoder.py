"""SAM's prompt encoder, box prompts only: corner embeddings and the "no mask" dense embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from bubogpt.grounding.sam.config import SamConfig


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]^2; the Gaussian matrix comes from the checkpoint."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 2] as (x, y) in [0, 1] -> [..., 2 * num_pos_feats] (sin | cos)."""
        coords = 2 * coords - 1
        coords = 2 * math.pi * (coords @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def dense(self, h: int, w: int) -> torch.Tensor:
        """[C, h, w] encoding of the centres of an h x w grid (official `forward(size)`)."""
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self.encode(grid).permute(2, 0, 1)


class SamBoxPromptEncoder(nn.Module):
    """The box part of the official `PromptEncoder`: corner embeddings, and the "no mask" dense embedding.

    Official names kept: `pe_layer`, `no_mask_embed`. The official `point_embeddings` list holds 4
    embeddings (negative point, positive point, box corner 1, box corner 2); we keep the two corner ones
    as `box_corner_embeddings.0/1` (key map: official `point_embeddings.2/3`).
    """

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        dim = cfg.prompt_embed_dim
        self.img_size = cfg.img_size
        self.embed_size = cfg.embed_size
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.box_corner_embeddings = nn.ModuleList([nn.Embedding(1, dim), nn.Embedding(1, dim)])
        self.no_mask_embed = nn.Embedding(1, dim)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes [..., 4] (x0, y0, x1, y1 in the S x S input frame) -> corner tokens [M, 2, C], M boxes."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)  # +0.5: pixel centres, as official
        corners = corners / float(self.img_size)  # x / W and y / H; the input frame is square
        embedding = self.pe_layer.encode(corners)
        corner_ids = torch.cat([self.box_corner_embeddings[0].weight, self.box_corner_embeddings[1].weight])
        return embedding + corner_ids  # [2, C] broadcast over the boxes

    def dense_pe(self) -> torch.Tensor:
        """[1, C, g, g] positional encoding of the image embedding grid (official `get_dense_pe`)."""
        return self.pe_layer.dense(self.embed_size, self.embed_size).unsqueeze(0)

    def no_mask_dense(self) -> torch.Tensor:
        """[1, C, 1, 1]: the dense prompt when no mask is given, broadcast over the grid."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)
