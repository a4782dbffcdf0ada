"""Swin Transformer backbone of Grounding DINO (the mmdet-style Swin in the official backbone/).

Module and parameter names follow the official `SwinTransformer` so the checkpoint's `backbone.0.*`
keys map one to one (see gdino_checkpoint.py). Differences, all numerically neutral:

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

from bubogpt.grounding.gdino_config import SwinConfig


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of `window`) -> [B * num_windows, window * window, C]."""
    _, height, width, channels = x.shape
    x = x.reshape(-1, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(
    windows: torch.Tensor, window: int, height: torch.Tensor | int, width: torch.Tensor | int
) -> torch.Tensor:
    """[B * num_windows, window * window, C] -> [B, H, W, C]."""
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """For each pair of tokens in a window, the row of the relative position bias table (as the official)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def shifted_window_mask(
    padded_h: torch.Tensor | int, padded_w: torch.Tensor | int, window: int, shift: int, device: torch.device
) -> torch.Tensor:
    """Additive mask [num_windows, N, N] that keeps a shifted window from mixing image regions.

    The official code labels 3x3 regions of the padded map by slice assignment (rows < Hp - window,
    rows in [Hp - window, Hp - shift), rows >= Hp - shift; same for columns); here the same labels come
    from comparisons against arange so the graph stays shape-generic. Cross-region pairs get -100.
    """
    rows = torch.arange(padded_h, device=device)
    cols = torch.arange(padded_w, device=device)
    row_region = (rows >= padded_h - window).long() + (rows >= padded_h - shift).long()
    col_region = (cols >= padded_w - window).long() + (cols >= padded_w - shift).long()
    labels = (row_region[:, None] * 3 + col_region[None, :]).float()
    windows = window_partition(labels[None, :, :, None], window).squeeze(-1)  # [num_windows, N]
    different = windows[:, None, :] != windows[:, :, None]
    return different.float() * -100.0


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class WindowAttention(nn.Module):
    """Window self-attention with a relative position bias table."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B * num_windows, N, C]; mask [num_windows, N, N] additive, or None for unshifted blocks."""
        tokens, channels = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(tokens, tokens, -1).permute(2, 0, 1)[None]
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.reshape(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.reshape(-1, self.num_heads, tokens, tokens)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(-1, tokens, channels)
        return self.proj(out)


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.shift = shift  # fixed at build time (odd blocks shift), not data-dependent
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

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
        # the official order: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


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
        shift_mask = shifted_window_mask(padded_h, padded_w, self.window, self.shift, x.device)
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
