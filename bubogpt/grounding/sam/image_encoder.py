"""SAM's image encoder: a ViTDet-style ViT, pixels [B, 3, S, S] -> embeddings [B, C, S/16, S/16].

Names are identical to the official `image_encoder.` modules. Numerics as official: LayerNorm eps
1e-6 in the blocks and the neck, exact (erf) GELU in the MLPs. Windowed blocks zero-pad the grid to
whole windows; every shape comes from the config, so the traced graph has only a dynamic batch axis.
"""

from __future__ import annotations

import torch
from torch import nn

from bubogpt.grounding.sam.common import LayerNorm2d, MLPBlock
from bubogpt.grounding.sam.config import SamConfig


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
        self.config = cfg
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
