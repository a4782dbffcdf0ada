"""Swin Transformer layers shared by RAM's Swin-L (`ram/backbone.py`) and Grounding DINO's Swin-T
(`grounding_dino/backbone.py`).

Both official copies descend from Microsoft's Swin and compute the same window attention, MLP,
relative position index, shifted-window mask and 2x2 patch merge; those live here, once, with the
official parameter names (`attn.relative_position_bias_table`, `attn.qkv`, `attn.proj`, `mlp.fc1`,
`mlp.fc2`), so both checkpoint key maps stay the identity below a block.

What stays with each family is how a block meets its feature map, because the two run differently:
    RAM       a fixed 384 px input: every map is whole windows, masks are constant buffers built once,
              maps no larger than a window use one unshifted window (Swin's rule), tokens travel as
              [B, L, C] and the output is the token sequence with a pooled token in front.
    DINO      any image size: maps are zero-padded to whole windows and cropped back inside the graph,
              the mask is built per forward from the padded size, tokens travel as [B, H, W, C] and
              the output is the normed map of stages 1-3.
One block class for both would either put run-time Pad/Slice nodes into RAM's exported graph or hold
two forward paths, so each family keeps its own thin block and stage around these layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MapSize = int | tuple[torch.Tensor | int, torch.Tensor | int]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of `window`) -> [B * num_windows, window * window, C], row-major windows."""
    _, height, width, channels = x.shape
    x = x.reshape(-1, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(
    windows: torch.Tensor, window: int, height: torch.Tensor | int, width: torch.Tensor | int
) -> torch.Tensor:
    """Inverse of window_partition: [B * num_windows, window * window, C] -> [B, H, W, C]."""
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """[window^2, window^2] index into the (2w-1)^2 bias table for every (query, key) pair of a window.

    A pure function of the window size, so both families recompute it rather than load it (the official
    RAM loader deletes the checkpoint's copy; the Grounding DINO loader checks it against this).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = coords[:, :, None] - coords[:, None, :]  # [2, N, N], each in [-(w-1), w-1]
    delta = delta + (window - 1)
    return delta[0] * (2 * window - 1) + delta[1]


def shifted_window_mask(
    size: MapSize, window: int, shift: int, device: torch.device | None = None
) -> torch.Tensor:
    """Additive mask [num_windows, N, N] that keeps a shifted window from mixing image regions.

    `size` is the side of a square map (RAM, at build time) or the padded (height, width) of the map
    (Grounding DINO, traced values during export). The official code labels 3x3 regions by slice
    assignment (rows < H - window, rows in [H - window, H - shift), rows >= H - shift; same for
    columns); the same labels come here from comparisons against arange, so a traced graph keeps H and
    W symbolic. Pairs from different regions (neighbours only because of the cyclic shift) get -100,
    not -inf, as Swin: exp(-100) underflows to 0 in fp32 yet stays finite in fp16 engines.
    """
    height, width = size if isinstance(size, tuple) else (size, size)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_region = (rows >= height - window).long() + (rows >= height - shift).long()
    col_region = (cols >= width - window).long() + (cols >= width - shift).long()
    labels = (row_region[:, None] * 3 + col_region[None, :]).float()
    windows = window_partition(labels[None, :, :, None], window).squeeze(-1)  # [num_windows, N]
    different = windows[:, None, :] != windows[:, :, None]
    return different.float() * -100.0


def merge_2x2(x: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] (H, W even) -> [B, H/2, W/2, 4C]: each 2x2 neighbourhood concatenated in the
    checkpoint's channel order (row parity, column parity) = (0,0), (1,0), (0,1), (1,1)."""
    return torch.cat((x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]), dim=-1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with Swin's learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Not persistent: derived from the window size (see relative_position_index).
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B * num_windows, N, C]; mask [num_windows, N, N] additive, or None for unshifted blocks."""
        tokens, channels = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B*nW, heads, N, head_dim]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # scale before the product, as Swin
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:  # chosen per block at build time, not data-dependent
            num_windows = mask.shape[0]
            attn = attn.reshape(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.reshape(-1, self.num_heads, tokens, tokens)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(-1, tokens, channels)
        return self.proj(out)


class SwinMlp(nn.Module):
    """fc1 -> exact (erf) GELU, nn.GELU's default -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
