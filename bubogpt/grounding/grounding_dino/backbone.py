"""Grounding DINO's Swin-T backbone (the mmdet-style Swin in the official backbone/).

Module and parameter names follow the official `SwinTransformer` so the checkpoint's `backbone.0.*`
keys map one to one (see checkpoint.py). The window attention, MLP, window partition, relative
position index and shifted-window mask are the shared `bubogpt.grounding.swin` layers; what is
specific to this copy is how a block meets a map of any size. Differences from the official code, all
numerically neutral:

- Features travel as [B, H, W, C] between blocks instead of [B, H*W, C] plus H/W attributes.
- Padding to whole windows / even sizes is always applied (with amount 0 when nothing is needed) and
  the result always cropped, instead of `if pad > 0:` branches, so a traced graph keeps H and W
  symbolic. The shifted-window mask is built from index comparisons instead of slice assignment.
- `relative_position_index` is a non-persistent buffer; the loader checks the checkpoint's copy.

As in the official code, zero padding tokens are attended to (not masked) inside padded windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.grounding_dino.config import SwinConfig
from bubogpt.grounding.swin import (
    SwinMlp,
    WindowAttention,
    merge_2x2,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.shift = shift  # fixed at build time (odd blocks shift), not data-dependent
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        height, width = x.shape[1], x.shape[2]
        shortcut = x
        x = self.norm1(x)
        # pad (after the norm, with zeros, as the official) to whole windows
        pad_b = (self.window - height % self.window) % self.window
        pad_r = (self.window - width % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        padded_h, padded_w = x.shape[1], x.shape[2]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window), shift_mask if self.shift else None)
        x = window_reverse(windows, self.window, padded_h, padded_w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x[:, :height, :width, :]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> LayerNorm(4C) -> Linear(4C, 2C); odd sizes are zero-padded first."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        return self.reduction(self.norm(merge_2x2(x)))


class BasicLayer(nn.Module):
    """One Swin stage: blocks (even ones plain, odd ones shifted by window // 2), then patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, H, W, C] -> (stage output [B, H, W, C], input of the next stage)."""
        height, width = x.shape[1], x.shape[2]
        padded_h = (height + self.window - 1) // self.window * self.window
        padded_w = (width + self.window - 1) // self.window * self.window
        shift_mask = shifted_window_mask((padded_h, padded_w), self.window, self.shift, x.device)
        for block in self.blocks:
            x = block(x, shift_mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, H/4, W/4, C] (right/bottom zero padding to a multiple of the patch)."""
        height, width = pixels.shape[2], pixels.shape[3]
        pad_r = (self.patch_size - width % self.patch_size) % self.patch_size
        pad_b = (self.patch_size - height % self.patch_size) % self.patch_size
        x = self.proj(F.pad(pixels, (0, pad_r, 0, pad_b)))
        return self.norm(x.permute(0, 2, 3, 1))


class SwinBackbone(nn.Module):
    """Swin Transformer returning the (normed) feature maps of `out_indices` as [B, C, H, W]."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        self.out_indices = tuple(config.out_indices)
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        num_stages = len(config.depths)
        self.layers = nn.ModuleList(
            BasicLayer(
                config.num_features[i],
                config.depths[i],
                config.num_heads[i],
                config.window_size,
                config.mlp_ratio,
                downsample=i < num_stages - 1,
            )
            for i in range(num_stages)
        )
        for i in self.out_indices:  # one LayerNorm per returned stage, named norm{i} as the official
            self.add_module(f"norm{i}", nn.LayerNorm(config.num_features[i]))

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(pixels)
        outs = []
        for i, layer in enumerate(self.layers):
            stage_out, x = layer(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(stage_out).permute(0, 3, 1, 2))
        return outs
