"""Segment Anything (SAM) for box prompts: image encoder, prompt decoder, pre/post-processing, checkpoints.

BuboGPT's grounding step gives SAM one box per detected entity (Grounding DINO's output, mapped to
SAM's input frame) and keeps a single mask per box (`multimask_output=False`: the first mask token).
We split SAM into the two networks a server runs at different rates:

    image (uint8 HxWx3) --preprocess_image--> pixels [3,S,S] --SamImageEncoder--> embeddings [B,C,S/16,S/16]
    boxes (original px) --transform_boxes---> boxes [B,N,4] in the S x S input frame
    (embeddings, boxes) --SamPromptDecoder--> low-res mask logits [B,N,S/4,S/4], predicted IoU [B,N]
    logits --postprocess_masks--> logits at the original size --masks_from_logits (> 0.0)--> bool masks

Both networks are export-friendly: every shape decision inside `forward` comes from the config (Python
ints), never from the data, so `torch.onnx.export` traces one graph with a dynamic batch axis (and a
dynamic number of boxes for the decoder). Pre/post-processing, which depends on each image's size,
lives in plain functions beside the networks.

Names mirror the official `segment_anything.modeling` modules (image encoder: identical below
`image_encoder.`; mask decoder: identical below `mask_decoder.`), so the checkpoint key map is the
identity except for the prompt encoder, where we keep only what box prompts use; see `sam_key_map`
and `SAM_IGNORED_KEYS`.

Numerics follow the official code: LayerNorm eps 1e-6 in the ViT and in LayerNorm2d, 1e-5 in the
two-way transformer; exact (erf) GELU in the ViT and the mask upscaling, ReLU in the transformer MLPs.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from bubogpt.official_checkpoints import CheckpointError, LoadReport

logger = logging.getLogger(__name__)

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_MASK_THRESHOLD = 0.0  # logits above this are "in the mask" (official `Sam.mask_threshold`)


# --------------------------------------------------------------------------------------------------
# Configuration and presets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamConfig:
    """SAM sizes; the defaults are ViT-H as in the official `build_sam_vit_h`."""

    name: str = "vit_h"
    # image encoder (ViTDet-style ViT)
    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    encoder_out_chans: int = 256
    img_size: int = 1024
    patch_size: int = 16
    # prompt encoder + mask decoder
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # Hidden width of the official mask-prompt path (`mask_downscaling`). We drop that path (box prompts
    # only); the field documents the official architecture for key lists and parameter counts.
    mask_in_chans: int = 16
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so that configs compare and hash.
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes))
        object.__setattr__(self, "pixel_mean", tuple(self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(self.pixel_std))
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append(f"encoder_embed_dim {self.encoder_embed_dim} % encoder_num_heads {self.encoder_num_heads}")
        if self.encoder_out_chans != self.prompt_embed_dim:
            # The mask decoder consumes the encoder's output as is.
            problems.append(f"encoder_out_chans {self.encoder_out_chans} != prompt_embed_dim {self.prompt_embed_dim}")
        internal = self.prompt_embed_dim // self.decoder_attention_downsample_rate
        if internal % self.decoder_num_heads or self.prompt_embed_dim % self.decoder_num_heads:
            problems.append(f"prompt_embed_dim {self.prompt_embed_dim} (and /downsample) % decoder_num_heads")
        if self.prompt_embed_dim % 8:
            problems.append(f"prompt_embed_dim {self.prompt_embed_dim} must be a multiple of 8 (mask upscaling)")
        if self.mask_in_chans % 4:
            problems.append(f"mask_in_chans {self.mask_in_chans} must be a multiple of 4")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            problems.append(f"encoder_global_attn_indexes {bad} outside depth {self.encoder_depth}")
        if self.encoder_window_size <= 0:
            problems.append("encoder_window_size must be positive (global blocks go in encoder_global_attn_indexes)")
        if self.iou_head_depth < 1:
            problems.append("iou_head_depth must be >= 1")
        if problems:
            raise ValueError(f"SamConfig {self.name!r}: " + "; ".join(problems))

    @property
    def embed_size(self) -> int:
        """Side of the image embedding grid (64 for the official 1024 / 16)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's mask logits (4x the embedding grid: 256 officially)."""
        return 4 * self.embed_size

    @property
    def encoder_mlp_dim(self) -> int:
        return int(self.encoder_embed_dim * self.encoder_mlp_ratio)

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1


SAM_PRESETS: dict[str, SamConfig] = {
    # official build_sam_vit_{h,l,b}: only the encoder differs
    "vit_h": SamConfig(name="vit_h"),
    "vit_l": SamConfig(
        name="vit_l", encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_b": SamConfig(
        name="vit_b", encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    # Tests: every part present and exercised (window 6 on a 16x16 grid pads to 18x18 like 14 on
    # the official 64x64 pads to 70x70; one windowed and one global block), forward in milliseconds.
    "tiny": SamConfig(
        name="tiny", encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=(1,), encoder_window_size=6, encoder_out_chans=32, img_size=256,
        prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
        mask_in_chans=8,
    ),
}


# --------------------------------------------------------------------------------------------------
# Shared layers
# --------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt / detectron2 style, as official SAM)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """lin1 -> activation -> lin2 (official `common.MLPBlock`)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


# --------------------------------------------------------------------------------------------------
# Image encoder
# --------------------------------------------------------------------------------------------------


def _relative_index(size: int, device: torch.device) -> torch.Tensor:
    """[size, size] index into a (2*size-1)-row table: entry (i, j) is i - j + size - 1.

    Query and key grids are always the same size here (the input size is fixed), so the official
    interpolation / rescaling branches of `get_rel_pos` never apply.
    """
    coords = torch.arange(size, device=device)
    return coords[:, None] - coords[None, :] + (size - 1)


class SamViTAttention(nn.Module):
    """Multi-head attention over an h x w token grid with decomposed relative position terms (MViTv2)."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid = grid  # static side of the (window or global) token grid this block attends over
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, heads, hd = self.grid, self.num_heads, self.head_dim
        n = g * g
        # [B', g, g, D] -> q, k, v: [B', heads, n, hd]
        qkv = self.qkv(x).reshape(-1, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B', heads, n, n]

        # Decomposed relative position: attn[(y,x),(y',x')] += q(y,x)·Rh[y-y'] + q(y,x)·Rw[x-x'].
        # Written as broadcast matmuls (no einsum) so TensorRT parses it without plugins.
        index = _relative_index(g, x.device)
        rh = self.rel_pos_h[index]  # [g(y), g(y'), hd]
        rw = self.rel_pos_w[index]  # [g(x), g(x'), hd]
        r_q = q.reshape(-1, heads, g, g, hd)  # unscaled q, as official
        rel_h = r_q @ rh.transpose(-2, -1)  # batch dims (.., y) x (y): [B', heads, y, x, y']
        rel_w = (r_q.transpose(2, 3) @ rw.transpose(-2, -1)).transpose(2, 3)  # [B', heads, y, x, x']
        attn = attn.reshape(-1, heads, g, g, g, g) + rel_h[..., :, None] + rel_w[..., None, :]
        attn = attn.reshape(-1, heads, n, n).softmax(dim=-1)

        out = (attn @ v).transpose(1, 2).reshape(-1, g, g, heads * hd)
        return self.proj(out)


class SamViTBlock(nn.Module):
    """Pre-norm ViT block; window attention (zero-padded windows) unless `window_size == 0` (global)."""

    def __init__(self, cfg: SamConfig, window_size: int) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.grid = cfg.embed_size
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SamViTAttention(dim, cfg.encoder_num_heads, window_size if window_size else cfg.embed_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, cfg.encoder_mlp_dim, nn.GELU)

    def _partition(self, x: torch.Tensor) -> torch.Tensor:
        """[B, g, g, D] -> [B * windows, ws, ws, D], zero-padding the grid up to a multiple of ws."""
        ws, g = self.window_size, self.grid
        pad = (ws - g % ws) % ws  # static: depends on the config only
        if pad:
            # Concatenated zeros rather than F.pad: the TorchScript exporter turns F.pad into a Pad whose
            # pads are computed at run time (a reversed Slice), which TensorRT's parser may reject.
            x = torch.cat([x, torch.zeros_like(x[:, :pad])], dim=1)
            x = torch.cat([x, torch.zeros_like(x[:, :, :pad])], dim=2)
        nw = (g + pad) // ws
        x = x.reshape(-1, nw, ws, nw, ws, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, ws, ws, x.shape[-1])

    def _unpartition(self, windows: torch.Tensor) -> torch.Tensor:
        ws, g = self.window_size, self.grid
        padded = g + (ws - g % ws) % ws
        nw = padded // ws
        x = windows.reshape(-1, nw, nw, ws, ws, windows.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, padded, padded, windows.shape[-1])
        return x[:, :g, :g, :] if padded > g else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            x = self._unpartition(self.attn(self._partition(x)))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SamPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # NCHW -> NHWC, the layout the blocks work in


class SamImageEncoder(nn.Module):
    """SAM's ViT: pixels [B, 3, S, S] (normalised, zero-padded) -> embeddings [B, C, S/16, S/16]."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.img_size
        dim, g = cfg.encoder_embed_dim, cfg.embed_size
        self.patch_embed = SamPatchEmbed(cfg.patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, dim))
        globals_ = set(cfg.encoder_global_attn_indexes)
        self.blocks = nn.ModuleList(
            SamViTBlock(cfg, 0 if i in globals_ else cfg.encoder_window_size) for i in range(cfg.encoder_depth)
        )
        out = cfg.encoder_out_chans
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out, kernel_size=1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------------
# Prompt encoder (boxes only) + mask decoder
# --------------------------------------------------------------------------------------------------


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


class SamTwoWayAttention(nn.Module):
    """Attention with an optional down-projection of q/k/v (official `transformer.Attention`)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.internal_dim = embedding_dim // downsample_rate
        # sqrt(head dim) as a Python constant, so that tracing records no shape op for it
        self.scale_divisor = math.sqrt(self.internal_dim // num_heads)
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.num_heads, -1).transpose(1, 2)  # [B, heads, tokens, c]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = (q @ k.transpose(-2, -1)) / self.scale_divisor
        out = attn.softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).flatten(2))


class SamTwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(self, cfg: SamConfig, skip_first_layer_pe: bool) -> None:
        super().__init__()
        dim, heads, down = cfg.prompt_embed_dim, cfg.decoder_num_heads, cfg.decoder_attention_downsample_rate
        self.self_attn = SamTwoWayAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = SamTwoWayAttention(dim, heads, down)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, cfg.decoder_mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = SamTwoWayAttention(dim, heads, down)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            # The first layer's queries ARE the prompt embeddings: official replaces instead of adding.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class SamTwoWayTransformer(nn.Module):
    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        dim = cfg.prompt_embed_dim
        self.layers = nn.ModuleList(SamTwoWayAttentionBlock(cfg, i == 0) for i in range(cfg.decoder_depth))
        self.final_attn_token_to_image = SamTwoWayAttention(
            dim, cfg.decoder_num_heads, cfg.decoder_attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding [B, C, h, w], image_pe [1 or B, C, h, w], point_embedding [B, T, C]."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)  # broadcast over B (official repeats it)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class SamMLP(nn.Module):
    """`num_layers` linears with ReLU between them (official `mask_decoder.MLP`)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class SamMaskDecoder(nn.Module):
    """The official `MaskDecoder`, run in single-mask mode (mask token 0 and its IoU estimate).

    All `num_multimask_outputs + 1` mask tokens stay: they take part in the transformer's attention and
    so change token 0's output. Hypernetwork MLPs 1..3 are loaded but unused in single-mask mode (kept so
    the checkpoint maps one to one and multi-mask output stays a small change).
    """

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        dim = cfg.prompt_embed_dim
        self.embed_size = cfg.embed_size
        self.transformer_dim = dim
        self.transformer = SamTwoWayTransformer(cfg)
        self.iou_token = nn.Embedding(1, dim)
        self.num_mask_tokens = cfg.num_mask_tokens
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            SamMLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = SamMLP(dim, cfg.iou_head_hidden_dim, self.num_mask_tokens, cfg.iou_head_depth)

    def forward(
        self, src: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """src [M, C, g, g] (image embedding + dense prompt, one row per prompt), image_pe [1, C, g, g],
        sparse_prompt_embeddings [M, T, C] -> (mask logits [M, 4g, 4g], iou [M])."""
        g, dim = self.embed_size, self.transformer_dim
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.shape[0], -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_token_out = hs[:, 1, :]  # single-mask output = mask token 0

        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(-1, dim, g, g))  # [M, C/8, 4g, 4g]
        hyper_in = self.output_hypernetworks_mlps[0](mask_token_out)  # [M, C/8]
        masks = (hyper_in.unsqueeze(1) @ upscaled.flatten(2)).reshape(-1, 4 * g, 4 * g)
        iou = self.iou_prediction_head(iou_token_out)[:, 0]
        return masks, iou


class SamPromptDecoder(nn.Module):
    """Box prompts -> one mask per box: (embeddings [B, C, g, g], boxes [B, N, 4]) -> ([B, N, 4g, 4g], [B, N]).

    Boxes are (x0, y0, x1, y1) in the padded S x S input frame (see `transform_boxes`). The N boxes of
    an image are folded into the batch (the image embedding is broadcast to each), so B and N are both
    dynamic axes in an exported graph. Outputs are mask logits (threshold 0.0) and predicted IoU.
    """

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.prompt_encoder = SamBoxPromptEncoder(cfg)
        self.mask_decoder = SamMaskDecoder(cfg)

    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_boxes = boxes.shape[1]  # traced as a dynamic dimension, not a constant
        side = self.cfg.low_res_size
        dim, g = self.cfg.prompt_embed_dim, self.cfg.embed_size
        sparse = self.prompt_encoder.embed_boxes(boxes)  # [B*N, 2, C], row b*N + n
        src = image_embeddings.unsqueeze(1).expand(-1, num_boxes, -1, -1, -1).reshape(-1, dim, g, g)
        src = src + self.prompt_encoder.no_mask_dense()
        masks, iou = self.mask_decoder(src, self.prompt_encoder.dense_pe(), sparse)
        return masks.reshape(-1, num_boxes, side, side), iou.reshape(-1, num_boxes)


# --------------------------------------------------------------------------------------------------
# Pre- and post-processing (per image; outside the exported graphs)
# --------------------------------------------------------------------------------------------------


def get_preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to `long_side`, rounded half up (official ResizeLongestSide)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def preprocess_image(image: np.ndarray, cfg: SamConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 [H, W, 3] -> (pixels float32 [3, S, S], resized (h, w)).

    Official SamPredictor.set_image: resize the longest side to S with PIL bilinear (torchvision's
    `resize(to_pil_image(x))` is PIL's resize), normalise with SAM's mean/std, zero-pad bottom/right.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"preprocess_image expects an RGB uint8 array [H, W, 3], got {desc}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"preprocess_image: empty image ({h}x{w})")
    new_h, new_w = get_preprocess_shape(h, w, cfg.img_size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    mean = np.asarray(cfg.pixel_mean, dtype=np.float32)
    std = np.asarray(cfg.pixel_std, dtype=np.float32)
    normalised = (resized.astype(np.float32) - mean) / std
    pixels = np.zeros((3, cfg.img_size, cfg.img_size), dtype=np.float32)
    pixels[:, :new_h, :new_w] = normalised.transpose(2, 0, 1)
    return pixels, (new_h, new_w)


def transform_boxes(boxes: Any, original_hw: tuple[int, int], cfg: SamConfig) -> np.ndarray:
    """Boxes [..., 4] (x0, y0, x1, y1) in original pixels -> the S x S input frame, float32.

    Same arithmetic as the official `ResizeLongestSide.apply_boxes` (float64, then float32 as the
    predictor feeds the model): x scales by new_w / old_w and y by new_h / old_h, the rounded sizes.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4], got {boxes.shape}")
    old_h, old_w = original_hw
    new_h, new_w = get_preprocess_shape(old_h, old_w, cfg.img_size)
    scale = np.array([new_w / old_w, new_h / old_h, new_w / old_w, new_h / old_h])
    return (boxes * scale).astype(np.float32)


def inverse_transform_boxes(boxes: Any, original_hw: tuple[int, int], cfg: SamConfig) -> np.ndarray:
    """The inverse of `transform_boxes`: input-frame boxes [..., 4] -> original pixels, float32."""
    boxes = np.asarray(boxes, dtype=np.float64)
    old_h, old_w = original_hw
    new_h, new_w = get_preprocess_shape(old_h, old_w, cfg.img_size)
    scale = np.array([old_w / new_w, old_h / new_h, old_w / new_w, old_h / new_h])
    return (boxes * scale).astype(np.float32)


def postprocess_masks(
    low_res_logits: torch.Tensor | np.ndarray,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    cfg: SamConfig,
) -> torch.Tensor:
    """Mask logits [..., 4g, 4g] -> logits [..., H, W] at the original image size (official `postprocess_masks`).

    Upsample to S x S (bilinear, align_corners=False), crop the resized image's area (drops the
    padding), upsample to the original size. `input_hw` is the resized size from `preprocess_image`.
    """
    logits = torch.as_tensor(low_res_logits, dtype=torch.float32)
    if logits.ndim < 2:
        raise ValueError(f"postprocess_masks expects [..., h, w] logits, got shape {tuple(logits.shape)}")
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:])
    x = F.interpolate(x, (cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    x = F.interpolate(x, tuple(original_hw), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])


def masks_from_logits(logits: torch.Tensor, threshold: float = SAM_MASK_THRESHOLD) -> torch.Tensor:
    """Boolean masks: logit > threshold (0.0, the official `Sam.mask_threshold`)."""
    return logits > threshold


# --------------------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------------------

StateDict = Mapping[str, Any]
Checkpoint = Union[str, os.PathLike, StateDict]

# Official keys we do not load, with the reason (exact names; the mask-prompt path has the same
# names in every official file).
SAM_IGNORED_KEYS: dict[str, str] = {
    "prompt_encoder.point_embeddings.0.weight": "negative point prompt: we take boxes only",
    "prompt_encoder.point_embeddings.1.weight": "positive point prompt: we take boxes only",
    "prompt_encoder.not_a_point_embed.weight": "padding point: used for point prompts without a box only",
    **{
        f"prompt_encoder.mask_downscaling.{i}.{p}": "mask prompt path: not used with box prompts"
        for i in (0, 1, 3, 4, 6)
        for p in ("weight", "bias")
    },
}
# Buffers that may be in a file (the official Sam registers them non-persistent, so released files
# should not have them); they are constants of our preprocessing, so a file that has them must agree.
SAM_CHECKED_CONSTANTS: tuple[str, ...] = ("pixel_mean", "pixel_std")


class SamCheckpointError(CheckpointError):
    """A SAM checkpoint does not match the networks; the message lists the offending names."""


SamLoadReport = LoadReport  # what the loader did; shared with the other official loaders


def _image_encoder_names(cfg: SamConfig) -> list[str]:
    names = ["patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"]
    for i in range(cfg.encoder_depth):
        names += [
            f"blocks.{i}.{t}"
            for t in (
                "norm1.weight", "norm1.bias",
                "attn.rel_pos_h", "attn.rel_pos_w",
                "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                "norm2.weight", "norm2.bias",
                "mlp.lin1.weight", "mlp.lin1.bias", "mlp.lin2.weight", "mlp.lin2.bias",
            )
        ]
    names += ["neck.0.weight", "neck.1.weight", "neck.1.bias", "neck.2.weight", "neck.3.weight", "neck.3.bias"]
    return names


def _mask_decoder_names(cfg: SamConfig) -> list[str]:
    def attention(prefix: str) -> list[str]:
        return [f"{prefix}.{p}.{t}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for t in ("weight", "bias")]

    def linear_stack(prefix: str, n: int) -> list[str]:
        return [f"{prefix}.layers.{i}.{t}" for i in range(n) for t in ("weight", "bias")]

    names: list[str] = []
    for i in range(cfg.decoder_depth):
        layer = f"transformer.layers.{i}"
        names += attention(f"{layer}.self_attn") + attention(f"{layer}.cross_attn_token_to_image")
        names += attention(f"{layer}.cross_attn_image_to_token")
        names += [f"{layer}.mlp.{p}.{t}" for p in ("lin1", "lin2") for t in ("weight", "bias")]
        names += [f"{layer}.norm{n}.{t}" for n in (1, 2, 3, 4) for t in ("weight", "bias")]
    names += attention("transformer.final_attn_token_to_image")
    names += ["transformer.norm_final_attn.weight", "transformer.norm_final_attn.bias"]
    names += ["iou_token.weight", "mask_tokens.weight"]
    names += [f"output_upscaling.{i}.{t}" for i in (0, 1, 3) for t in ("weight", "bias")]
    for j in range(cfg.num_mask_tokens):
        names += linear_stack(f"output_hypernetworks_mlps.{j}", 3)
    names += linear_stack("iou_prediction_head", cfg.iou_head_depth)
    return names


def image_encoder_key_map(cfg: SamConfig) -> dict[str, str]:
    """Official key -> `SamImageEncoder` name: identity below the `image_encoder.` prefix."""
    return {f"image_encoder.{name}": name for name in _image_encoder_names(cfg)}


def prompt_decoder_key_map(cfg: SamConfig) -> dict[str, str]:
    """Official key -> `SamPromptDecoder` name: identity, except the box-corner point embeddings."""
    key_map = {
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
        ),
        "prompt_encoder.point_embeddings.2.weight": "prompt_encoder.box_corner_embeddings.0.weight",
        "prompt_encoder.point_embeddings.3.weight": "prompt_encoder.box_corner_embeddings.1.weight",
        "prompt_encoder.no_mask_embed.weight": "prompt_encoder.no_mask_embed.weight",
    }
    key_map.update({f"mask_decoder.{name}": f"mask_decoder.{name}" for name in _mask_decoder_names(cfg)})
    return key_map


def sam_key_map(cfg: SamConfig) -> dict[str, str]:
    """Official key -> "image_encoder.<ours>" / "prompt_decoder.<ours>", for the whole file."""
    key_map = {src: f"image_encoder.{dst}" for src, dst in image_encoder_key_map(cfg).items()}
    key_map.update({src: f"prompt_decoder.{dst}" for src, dst in prompt_decoder_key_map(cfg).items()})
    return key_map


def read_sam_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """torch.load on CPU with weights_only=True: the official files are flat dicts of tensors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SamCheckpointError(f"SAM checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SamCheckpointError(f"{path}: not a plain tensor checkpoint (weights_only load failed: {err})") from err
    if not isinstance(state, Mapping):
        raise SamCheckpointError(f"{path}: expected a flat state dict, got {type(state).__name__}")
    return dict(state)


def load_sam_checkpoint(
    image_encoder: SamImageEncoder | None,
    prompt_decoder: SamPromptDecoder | None,
    checkpoint: Checkpoint,
) -> SamLoadReport:
    """Fill our SAM networks from an official file (`sam_vit_{h,l,b}_*.pth`) or its state dict.

    Strict: raises SamCheckpointError listing missing (ours, not filled), unexpected (official keys
    neither mapped nor in SAM_IGNORED_KEYS) and mis-shaped keys; nothing is copied unless all match.
    Pass None for a network to load only the other one (its official keys are then skipped, logged).
    """
    if image_encoder is None and prompt_decoder is None:
        raise ValueError("load_sam_checkpoint: give an image encoder, a prompt decoder or both")
    if isinstance(checkpoint, (str, os.PathLike)):
        source, state = os.fspath(checkpoint), read_sam_checkpoint(checkpoint)
    elif isinstance(checkpoint, Mapping):
        source, state = "SAM state dict (in memory)", dict(checkpoint)
    else:
        raise SamCheckpointError(f"expected a path or a state dict, got {type(checkpoint).__name__}")

    key_map: dict[str, str] = {}
    targets: dict[str, nn.Module] = {}
    skipped_prefixes: list[str] = []
    if image_encoder is not None:
        targets["image_encoder"] = image_encoder
        key_map.update({s: f"image_encoder.{d}" for s, d in image_encoder_key_map(image_encoder.cfg).items()})
    else:
        skipped_prefixes.append("image_encoder.")
    if prompt_decoder is not None:
        targets["prompt_decoder"] = prompt_decoder
        key_map.update({s: f"prompt_decoder.{d}" for s, d in prompt_decoder_key_map(prompt_decoder.cfg).items()})
    else:
        skipped_prefixes += ["prompt_encoder.", "mask_decoder."]

    wanted = {
        f"{module_name}.{name}": tensor
        for module_name, module in targets.items()
        for name, tensor in module.state_dict(keep_vars=True).items()
    }
    stray = sorted(dst for dst in key_map.values() if dst not in wanted)
    if stray:  # a bug in the key map, not a problem of the file
        raise SamCheckpointError(f"{source}: key map names tensors our networks lack: {stray}")

    report = SamLoadReport(source=source)
    filled = set(key_map.values())
    missing = [f"{dst}  <- official {src!r}" for src, dst in key_map.items() if src not in state]
    missing += [f"{dst}  (no official key maps to it)" for dst in wanted if dst not in filled]
    unexpected, misshaped = [], []
    for key, value in state.items():
        if key in key_map:
            continue
        if key in SAM_IGNORED_KEYS or any(key.startswith(p) for p in skipped_prefixes):
            report.ignored.append(key)
        elif key in SAM_CHECKED_CONSTANTS:
            cfg = image_encoder.cfg if image_encoder is not None else prompt_decoder.cfg
            expected = torch.tensor(getattr(cfg, key), dtype=torch.float32)
            if not torch.is_tensor(value) or value.numel() != 3:
                misshaped.append(f"{key}: expected 3 values, got {getattr(value, 'shape', type(value).__name__)}")
            elif not torch.allclose(value.float().flatten(), expected, rtol=0, atol=1e-4):
                misshaped.append(f"{key}: {value.flatten().tolist()} differs from the config's {expected.tolist()}")
            else:
                report.ignored.append(key)
        else:
            unexpected.append(key)
    for src, dst in key_map.items():
        if src in state:
            value = state[src]
            if not torch.is_tensor(value):
                misshaped.append(f"{src} -> {dst}: not a tensor ({type(value).__name__})")
            elif tuple(value.shape) != tuple(wanted[dst].shape):
                misshaped.append(
                    f"{src} -> {dst}: checkpoint {tuple(value.shape)} vs model {tuple(wanted[dst].shape)}"
                )

    if missing or unexpected or misshaped:
        lines = [f"{source}: {len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped"]
        for title, items in (
            ("missing (our tensors the file does not fill):", missing),
            ("unexpected (official keys neither mapped nor in SAM_IGNORED_KEYS):", unexpected),
            ("mis-shaped (is the network built from the right preset?):", misshaped),
        ):
            if items:
                lines.append(title)
                lines += [f"  {item}" for item in items]
        raise SamCheckpointError("\n".join(lines))

    with torch.no_grad():
        for src, dst in key_map.items():
            wanted[dst].copy_(state[src].to(dtype=wanted[dst].dtype))
            report.loaded[dst] = src
    logger.info(
        "%s: loaded %d tensors into %s, ignored %d keys",
        source, len(report.loaded), "+".join(targets), len(report.ignored),
    )
    return report
