"""RAM's Swin transformer (inference only): pixels [B, 3, S, S] -> [B, 1 + L, C].

RAM's copy of the Microsoft implementation, eval mode: no dropout, no drop-path, no absolute position
embedding, patch norm on. A stage whose resolution is <= the window size uses one window of the whole
map and no shift (Swin's rule, `RamConfig.stage_window`); at 384 px this is the last stage (12x12 map,
window 12). The input size is fixed, so every map is whole windows (no padding) and each shifted
block's mask is a constant buffer built once. Module names mirror the official `visual_encoder`, so
that part of the key map is the identity. The window attention and MLP are the shared
`bubogpt.grounding.swin` layers.
"""

from __future__ import annotations

import torch
from torch import nn

from bubogpt.grounding.ram.config import RamConfig
from bubogpt.grounding.swin import (
    SwinMlp,
    WindowAttention,
    merge_2x2,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention, then MLP, both residual."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, cfg: RamConfig) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=cfg.swin_norm_eps)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.swin_norm_eps)
        self.mlp = SwinMlp(dim, int(dim * cfg.mlp_ratio))
        mask = shifted_window_mask(resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, channels = self.resolution, x.shape[-1]
        shortcut = x
        x = self.norm1(x).reshape(-1, size, size, channels)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window), self.attn_mask)
        x = window_reverse(windows, self.window, size, size)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(-1, size * size, channels)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: concat (Swin's x0, x1, x2, x3 order), LayerNorm, Linear(4C, 2C)."""

    def __init__(self, dim: int, resolution: int, eps: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, channels = self.resolution, x.shape[-1]
        x = merge_2x2(x.reshape(-1, size, size, channels))
        x = x.reshape(-1, (size // 2) ** 2, 4 * channels)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Swin's BasicLayer: blocks alternating plain / shifted windows, then (except last) patch merging."""

    def __init__(self, cfg: RamConfig, stage: int) -> None:
        super().__init__()
        dim, resolution = cfg.stage_dim(stage), cfg.stage_resolution(stage)
        window, shift = cfg.stage_window(stage)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, cfg.num_heads[stage], window, shift if i % 2 else 0, cfg)
            for i in range(cfg.depths[stage])
        )
        last = stage == len(cfg.depths) - 1
        self.downsample = None if last else PatchMerging(dim, resolution, cfg.swin_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.swin_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pixels).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """pixels [B, 3, S, S] -> [B, 1 + L, C]: the token average (RAM's "cls"), then the L final tokens."""

    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg)
        self.layers = nn.ModuleList(SwinStage(cfg, stage) for stage in range(len(cfg.depths)))
        self.norm = nn.LayerNorm(cfg.vision_width, eps=cfg.swin_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        for stage in self.layers:
            x = stage(x)
        x = self.norm(x)
        # RAM's SwinTransformer prepends AdaptiveAvgPool1d over the tokens (a mean) as a pseudo-CLS token.
        return torch.cat((x.mean(dim=1, keepdim=True), x), dim=1)
