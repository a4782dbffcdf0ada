"""RAM (Recognize Anything, `ram_swin_large_14m.pth`): the image tagger in front of Grounding DINO.

BuboGPT's grounding pipeline asks RAM for the tags of an image and hands them to the detector as its
text prompt. Only RAM's tagging path runs (`RAM.generate_tag`); the Tag2Text captioning branch that
ships in the same checkpoint (`tag_encoder`, `text_decoder`) is never used and is not built here.

What RAM computes, step by step (official `ram/models/ram.py`, `generate_tag`):
    x       = SwinTransformer(pixels)            # [B, 1 + L, 1536]: mean-pooled token, then the L patches
    image   = image_proj(x)                      # Linear(1536, 512)
    labels  = relu(wordvec_proj(label_embed))    # [num_tags, 512] -> Linear(512, 768) -> ReLU
    h       = tagging_head(labels, image)        # 2 BERT layers, cross-attention ONLY (self-attention and
                                                 #   the embeddings are deleted: Query2Label style)
    probs   = sigmoid(fc(h).squeeze(-1))         # Linear(768, 1) per tag -> [B, num_tags]
    tags    = probs > class_threshold, minus delete_tag_index, in tag-index order
RAM computes `image_cls_embeds` / `image_spatial_embeds` but only uses them for the batch size: the
tagging head attends to ALL tokens, the pooled one included, with an all-ones mask (additive 0).

Network (`RamTagger.forward`): pixels [B, 3, S, S] -> probabilities [B, num_tags]. Free of
data-dependent Python control flow (every branch depends on the config only), so it exports to ONNX
with a dynamic batch axis. Thresholding and tag names (`select_tags`) stay outside the network.

Swin is RAM's copy of the Microsoft implementation, eval mode: no dropout, no drop-path, no absolute
position embedding, patch norm on. A stage whose resolution is <= the window size uses one window of the
whole map and no shift (Swin's rule); at 384 px this is the last stage (12x12 map, window 12).
Module names under `visual_encoder` mirror the official ones, so that part of the key map is the
identity; the tagging head uses our names (q_proj, ..., as in `bubogpt.qformer`) and a rename table.

Tag vocabulary: the official 4585 tags (`ram_tag_list.txt`) and per-tag thresholds
(`ram_tag_list_threshold.txt`) are files the user has next to the checkpoint; `load_tag_list` and
`load_thresholds` read them. Nothing is downloaded. The `tiny` preset carries its own 24 tags.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bubogpt.image import to_rgb
from bubogpt.official_checkpoints import CheckpointError, LoadReport

logger = logging.getLogger(__name__)

# RAM's eval transform normalises with the ImageNet statistics (not CLIP's, unlike BLIP-2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Configuration and presets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RamConfig:
    """RAM's tagging network. Defaults are the official Swin-L / 384 px model (`ram_swin_large_14m.pth`).

    Sources: `ram/configs/swin/config_swinL_384.json` (Swin), `ram/configs/q2l_config.json` (tagging
    head; RAM overrides its `encoder_width` to 512), and the literals in `ram/models/ram.py`.
    """

    # Swin image encoder
    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    swin_norm_eps: float = 1e-5  # plain nn.LayerNorm
    # The joint image/label width: image_proj's output, label_embed's width, the cross-attention's
    # key/value input. RAM hard-codes 512 (the CLIP text embedding width its label embeddings came from).
    joint_dim: int = 512
    # Tagging head (q2l_config.json)
    head_hidden: int = 768
    head_layers: int = 2
    head_heads: int = 4
    head_intermediate: int = 3072
    head_norm_eps: float = 1e-12
    # Tags
    num_tags: int = 4585
    default_threshold: float = 0.68  # RAM's `threshold`: used for tags the threshold file does not list
    # Tags RAM never outputs. BuboGPT builds RAM with the default (none deleted).
    delete_tag_index: tuple[int, ...] = ()
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        problems = []
        if len(self.depths) != len(self.num_heads):
            problems.append(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        grid = self.image_size // self.patch_size
        if grid % (2 ** (len(self.depths) - 1)):
            problems.append(f"patch grid {grid} cannot be halved {len(self.depths) - 1} times")
        for stage in range(len(self.depths) if not problems else 0):  # the checks below need a valid grid
            resolution = grid // 2**stage
            window, _ = self.stage_window(stage)
            if resolution % window:  # Swin's window partition needs whole windows (RAM does not pad)
                problems.append(f"stage {stage}: resolution {resolution} is not a multiple of window {window}")
            if self.stage_dim(stage) % self.num_heads[stage]:
                problems.append(
                    f"stage {stage}: width {self.stage_dim(stage)} not divisible by {self.num_heads[stage]} heads"
                )
        if self.head_hidden % self.head_heads:
            problems.append(f"head_hidden {self.head_hidden} not divisible by head_heads {self.head_heads}")
        if any(not 0 <= i < self.num_tags for i in self.delete_tag_index):
            problems.append(f"delete_tag_index {self.delete_tag_index} outside [0, {self.num_tags})")
        if problems:
            raise ValueError("invalid RamConfig: " + "; ".join(problems))

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2**stage

    def stage_resolution(self, stage: int) -> int:
        return self.image_size // self.patch_size // 2**stage

    def stage_window(self, stage: int) -> tuple[int, int]:
        """(window, shift of the odd blocks) of a stage, with Swin's rule for maps no larger than a window."""
        resolution = self.stage_resolution(stage)
        if resolution <= self.window_size:
            return resolution, 0
        return self.window_size, self.window_size // 2

    @property
    def vision_width(self) -> int:
        return self.stage_dim(len(self.depths) - 1)

    @property
    def num_image_tokens(self) -> int:
        """Tokens the tagging head attends to: the pooled token plus the last stage's patches."""
        return 1 + self.stage_resolution(len(self.depths) - 1) ** 2


# A small vocabulary for the `tiny` preset and tests: common nouns, in the official list's (alphabetical)
# order, each with its threshold from the official `ram_tag_list_threshold.txt`.
TINY_TAG_LIST: tuple[str, ...] = (
    "ball", "beach", "bicycle", "bird", "boat", "building", "car", "cat",
    "chair", "child", "cloud", "dog", "flower", "food", "grass", "horse",
    "lake", "man", "person", "road", "sky", "swan", "tree", "water",
)  # fmt: skip
TINY_THRESHOLDS: tuple[float, ...] = (
    0.80, 0.90, 0.90, 0.83, 0.76, 0.80, 0.77, 0.90,
    0.77, 0.84, 0.75, 0.90, 0.82, 0.70, 0.83, 0.87,
    0.80, 0.80, 0.86, 0.90, 0.70, 0.82, 0.80, 0.85,
)  # fmt: skip

RAM_PRESETS: dict[str, RamConfig] = {
    "swin_l_384": RamConfig(),
    # Every part present at toy sizes. 64 px / patch 4 -> 16x16 map; window 4: stages 0-1 use shifted
    # windows (with the attention mask), stage 2 (4x4) is one unshifted window, stage 3 (2x2) exercises
    # Swin's "map smaller than the window" rule. One deleted tag ("food") exercises delete_tag_index.
    "tiny": RamConfig(
        image_size=64,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        window_size=4,
        joint_dim=32,
        head_hidden=48,
        head_layers=2,
        head_heads=4,
        head_intermediate=96,
        num_tags=len(TINY_TAG_LIST),
        delete_tag_index=(TINY_TAG_LIST.index("food"),),
    ),
}


# --------------------------------------------------------------------------------------------------
# Swin transformer (RAM's copy, inference only)
# --------------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * num_windows, window * window, C], windows in row-major order."""
    _, height, width, channels = x.shape
    x = x.reshape(-1, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of window_partition: [B * num_windows, window * window, C] -> [B, H, W, C]."""
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """[window^2, window^2] index into the (2w-1)^2 bias table for every (query, key) pair of a window.

    Pure function of the window size, so it is recomputed rather than loaded (the official loader
    deletes the checkpoint's copy too).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = coords[:, :, None] - coords[:, None, :]  # [2, N, N], each in [-(w-1), w-1]
    delta = delta + (window - 1)
    return delta[0] * (2 * window - 1) + delta[1]


def shifted_window_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """Additive mask [num_windows, N, N] for shifted windows: -100 between tokens that came from
    different regions of the un-rolled map (they are neighbours only because of the cyclic shift)."""
    regions = torch.zeros(1, resolution, resolution, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            regions[:, rows, cols, :] = label
            label += 1
    ids = window_partition(regions, window).squeeze(-1)  # [num_windows, N]
    different = ids[:, None, :] != ids[:, :, None]
    # -100 (not -inf), as Swin: exp(-100) underflows to 0 in fp32 yet stays finite in fp16 engines.
    return torch.where(different, torch.tensor(-100.0), torch.tensor(0.0))


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
        tokens, channels = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B*nW, heads, N, head_dim]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # scale before the product, as Swin
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:  # fixed per block at build time, not data-dependent
            num_windows = mask.shape[0]
            attn = attn.reshape(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.reshape(-1, self.num_heads, tokens, tokens)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(-1, tokens, channels)
        return self.proj(out)


class SwinMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # nn.GELU's default: exact (erf) GELU


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
        x = x.reshape(-1, size, size, channels)
        # (row parity, column parity) = (0,0), (1,0), (0,1), (1,1): the checkpoint's channel order.
        x = torch.cat((x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]), dim=-1)
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


# --------------------------------------------------------------------------------------------------
# Tagging head (Query2Label-style decoder: cross-attention only)
# --------------------------------------------------------------------------------------------------


class TaggingCrossAttention(nn.Module):
    """BERT cross-attention block (label queries attend to image tokens), residual, post-LayerNorm."""

    def __init__(self, hidden: int, kv_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(kv_dim, hidden)
        self.v_proj = nn.Linear(kv_dim, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(context))
        v = self._heads(self.v_proj(context))
        # BERT order: product, then divide by sqrt(head_dim). No mask: RAM's image mask is all ones,
        # which BERT turns into an additive 0.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        out = scores.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.norm(self.out_proj(out) + x)


class TaggingMlp(nn.Module):
    """BERT intermediate + output: fc1, GELU, fc2, residual, post-LayerNorm."""

    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(F.gelu(self.fc1(x))) + x)  # BERT "gelu" = exact (erf) GELU


class TaggingLayer(nn.Module):
    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        self.cross_attn = TaggingCrossAttention(cfg.head_hidden, cfg.joint_dim, cfg.head_heads, cfg.head_norm_eps)
        self.mlp = TaggingMlp(cfg.head_hidden, cfg.head_intermediate, cfg.head_norm_eps)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.cross_attn(x, image))


class TaggingHead(nn.Module):
    """label queries [B, T, hidden] x image tokens [B, L, joint_dim] -> [B, T, hidden]."""

    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TaggingLayer(cfg) for _ in range(cfg.head_layers))

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            labels = layer(labels, image)
        return labels


# --------------------------------------------------------------------------------------------------
# The tagger
# --------------------------------------------------------------------------------------------------


class RamTagger(nn.Module):
    """RAM's tagging network: pixels [B, 3, S, S] (normalised) -> sigmoid probabilities [B, num_tags]."""

    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual_encoder = SwinTransformer(cfg)
        self.image_proj = nn.Linear(cfg.vision_width, cfg.joint_dim)
        self.label_embed = nn.Parameter(torch.zeros(cfg.num_tags, cfg.joint_dim))
        # RAM builds an Identity when the head is as wide as the label embeddings (no weights then).
        self.wordvec_proj: nn.Module = (
            nn.Identity() if cfg.head_hidden == cfg.joint_dim else nn.Linear(cfg.joint_dim, cfg.head_hidden)
        )
        self.tagging_head = TaggingHead(cfg)
        self.fc = nn.Linear(cfg.head_hidden, 1)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Small random weights so a fresh model computes something finite; real ones come from checkpoints.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention):
                nn.init.normal_(module.relative_position_bias_table, std=0.02)
        nn.init.normal_(self.label_embed, std=0.02)

    def label_queries(self) -> torch.Tensor:
        """[num_tags, head_hidden]: the tagging head's queries. Depends on weights only (ONNX folds it)."""
        return F.relu(self.wordvec_proj(self.label_embed))

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        image = self.image_proj(self.visual_encoder(pixels))  # [B, 1 + L, joint_dim]
        labels = self.label_queries().unsqueeze(0).expand(pixels.shape[0], -1, -1)
        return self.fc(self.tagging_head(labels, image)).squeeze(-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(pixels))


# --------------------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------------------


def preprocess_image(image: Image.Image, cfg: RamConfig) -> torch.Tensor:
    """PIL image -> [3, S, S]: RAM's eval transform, without torchvision.

    RAM uses Resize((S, S)) + ToTensor + Normalize(ImageNet). torchvision's Resize defaults to
    BILINEAR and, on a PIL image, simply calls `PIL.Image.resize((S, S), BILINEAR)` (PIL's filter, which
    antialiases when shrinking); the aspect ratio is NOT kept. ToTensor divides by 255 in float32,
    Normalize subtracts the mean then divides by the std: the same float32 operations as below.
    Non-RGB images are converted as `bubogpt.image.to_rgb` does (alpha composited on white).
    """
    size = cfg.image_size
    resized = to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    array = (array - np.asarray(cfg.pixel_mean, dtype=np.float32)) / np.asarray(cfg.pixel_std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def load_tag_list(path: str | os.PathLike) -> list[str]:
    """`ram_tag_list.txt`: one tag per line, line i = tag index i (RAM reads it with splitlines)."""
    with open(path, encoding="utf-8") as f:
        tags = f.read().splitlines()
    empty = [i for i, tag in enumerate(tags) if not tag.strip()]
    if empty:
        raise ValueError(f"{path}: empty tag on line(s) {[i + 1 for i in empty[:10]]}")
    return tags


def load_thresholds(
    path: str | os.PathLike, num_tags: int | None = None, default: float = RamConfig.default_threshold
) -> torch.Tensor:
    """`ram_tag_list_threshold.txt`: one float per line, line i = threshold of tag i.

    With `num_tags`, applies RAM's rule: every tag starts at `default` (0.68) and the file overrides the
    first len(file) of them; a file with more lines than tags is an error (RAM would index out of range).
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():  # tolerate trailing blank lines only
        lines.pop()
    try:
        values = [float(line) for line in lines]
    except ValueError as err:
        raise ValueError(f"{path}: not one float per line ({err})") from None
    if num_tags is None:
        return torch.tensor(values, dtype=torch.float32)
    return class_thresholds(values, num_tags, default, source=os.fspath(path))


def class_thresholds(
    per_tag: Sequence[float], num_tags: int, default: float = RamConfig.default_threshold, source: str = "thresholds"
) -> torch.Tensor:
    """RAM's `class_threshold`: `default` everywhere, overridden by `per_tag` from index 0 on."""
    if len(per_tag) > num_tags:
        raise ValueError(f"{source}: {len(per_tag)} thresholds for {num_tags} tags")
    thresholds = torch.full((num_tags,), float(default), dtype=torch.float32)
    thresholds[: len(per_tag)] = torch.tensor(list(per_tag), dtype=torch.float32)
    return thresholds


def select_tags(
    probs: torch.Tensor | np.ndarray,
    thresholds: torch.Tensor | np.ndarray | Sequence[float],
    tag_list: Sequence[str],
    deleted_indices: Sequence[int] = (),
) -> list[str]:
    """One image's probabilities [num_tags] -> its tags, in tag-index order (as RAM's generate_tag).

    A tag is selected when prob > threshold (strictly, in float32 as RAM compares on the model's
    device) and its index is not deleted. BuboGPT's demo joins the result with " | "; we return a list.
    """
    p = torch.as_tensor(probs, dtype=torch.float32).detach().cpu()
    t = torch.as_tensor(thresholds, dtype=torch.float32).cpu()
    if p.ndim != 1:
        raise ValueError(f"probs must be one image's [num_tags] vector, got shape {tuple(p.shape)}")
    if not (p.shape[0] == t.numel() == len(tag_list)):
        raise ValueError(f"sizes differ: {p.shape[0]} probabilities, {t.numel()} thresholds, {len(tag_list)} tags")
    selected = p > t.reshape(-1)
    if len(deleted_indices):
        selected[torch.as_tensor(list(deleted_indices), dtype=torch.long)] = False
    return [tag_list[i] for i in torch.nonzero(selected).flatten().tolist()]


# --------------------------------------------------------------------------------------------------
# Official checkpoint (`ram_swin_large_14m.pth`)
# --------------------------------------------------------------------------------------------------

StateDict = Mapping[str, Any]
Checkpoint = Union[str, os.PathLike, StateDict]
IgnoreRule = tuple[str, str]  # (regex, full match over the official key; why it is skipped)


class RamCheckpointError(CheckpointError):
    """A RAM checkpoint that does not match the tagger; the message names every offending key."""


RamLoadReport = LoadReport  # what the loader did; shared with the other official loaders


# The official loader (`load_checkpoint_swinlarge`) renames this legacy prefix; so do we.
LEGACY_PREFIXES = {"vision_multi.": "tagging_head."}

RAM_IGNORED: tuple[IgnoreRule, ...] = (
    (r"tag_encoder\..+", "Tag2Text image-tag interaction encoder: captioning only (its first 2 layers are "
     "tied to tagging_head, whose own copies we load)"),
    (r"text_decoder\..+", "Tag2Text caption decoder: BuboGPT never captions with RAM"),
    (r"visual_encoder\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
     "buffer derived from the window size: recomputed (the official loader deletes it too)"),
    (r"visual_encoder\.layers\.\d+\.blocks\.\d+\.attn_mask",
     "shifted-window mask buffer: recomputed (the official loader deletes it too)"),
    # Defensive: RAM deletes these modules before its state dict is taken, so a released file should
    # not hold them; if one does, RAM's forward never reads them either.
    (r"tagging_head\.embeddings\..+", "tagging head embeddings: deleted by RAM (labels are fed as embeddings)"),
    (r"tagging_head\.encoder\.layer\.\d+\.attention\..+", "tagging head self-attention: deleted by RAM"),
)  # fmt: skip

# Official BERT names inside `tagging_head.encoder.layer.{i}.` -> ours inside `tagging_head.layers.{i}.`
_TAGGING_LAYER_RENAMES = (
    ("crossattention.self.query", "cross_attn.q_proj"),
    ("crossattention.self.key", "cross_attn.k_proj"),
    ("crossattention.self.value", "cross_attn.v_proj"),
    ("crossattention.output.dense", "cross_attn.out_proj"),
    ("crossattention.output.LayerNorm", "cross_attn.norm"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
    ("output.LayerNorm", "mlp.norm"),
)
_SWIN_BLOCK_TENSORS = (
    "norm1.weight", "norm1.bias",
    "attn.relative_position_bias_table",
    "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias",
)  # fmt: skip


def ram_key_map(cfg: RamConfig) -> dict[str, str]:
    """{official key: our parameter name} for every tensor the tagger needs, built from the config."""
    key_map: dict[str, str] = {}

    def same(*names: str) -> None:
        key_map.update({name: name for name in names})

    same("visual_encoder.patch_embed.proj.weight", "visual_encoder.patch_embed.proj.bias")
    same("visual_encoder.patch_embed.norm.weight", "visual_encoder.patch_embed.norm.bias")
    for stage, depth in enumerate(cfg.depths):
        for block in range(depth):
            same(*(f"visual_encoder.layers.{stage}.blocks.{block}.{t}" for t in _SWIN_BLOCK_TENSORS))
        if stage < len(cfg.depths) - 1:
            prefix = f"visual_encoder.layers.{stage}.downsample"
            same(f"{prefix}.reduction.weight", f"{prefix}.norm.weight", f"{prefix}.norm.bias")
    same("visual_encoder.norm.weight", "visual_encoder.norm.bias")
    same("image_proj.weight", "image_proj.bias", "label_embed")
    if cfg.head_hidden != cfg.joint_dim:  # else wordvec_proj is an Identity without weights
        same("wordvec_proj.weight", "wordvec_proj.bias")
    for layer in range(cfg.head_layers):
        for official, ours in _TAGGING_LAYER_RENAMES:
            for kind in ("weight", "bias"):
                source = f"tagging_head.encoder.layer.{layer}.{official}.{kind}"
                key_map[source] = f"tagging_head.layers.{layer}.{ours}.{kind}"
    same("fc.weight", "fc.bias")
    return key_map


def read_ram_checkpoint(checkpoint: Checkpoint, *, allow_pickle: bool = False) -> tuple[str, StateDict]:
    """A path or an in-memory dict -> (name for messages, official state dict).

    Files are read with `torch.load(weights_only=True)`; a file that needs full unpickling is refused
    unless `allow_pickle=True` (only for files you trust). Accepts `{"model": state, ...}` (the
    released layout) or a flat state dict.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if not allow_pickle:
                raise RamCheckpointError(
                    f"{source}: not loadable with weights_only=True ({err}); pass allow_pickle=True if you trust it"
                ) from None
            logger.warning("%s: weights_only load failed; unpickling fully (allow_pickle=True)", source)
            obj = torch.load(source, map_location="cpu", weights_only=False)
    elif isinstance(checkpoint, Mapping):
        source, obj = "ram checkpoint (in memory)", checkpoint
    else:
        raise RamCheckpointError(f"expected a path or a state dict, got {type(checkpoint).__name__}")
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise RamCheckpointError(
            f"{source}: expected a state dict or {{'model': state dict}}, got {type(obj).__name__}"
        )
    return source, obj


def load_ram_checkpoint(model: RamTagger, checkpoint: Checkpoint, *, allow_pickle: bool = False) -> RamLoadReport:
    """Load the official RAM weights into `model` through `ram_key_map`, strictly.

    Fails with RamCheckpointError (nothing copied) listing: missing (our tensors the file does not
    fill), unexpected (official keys neither mapped nor matched by RAM_IGNORED), mis-shaped (usually
    the wrong preset; unlike the official loader we do not interpolate relative position tables).
    Tensors are cast to the parameter dtype.
    """
    source, raw = read_ram_checkpoint(checkpoint, allow_pickle=allow_pickle)
    state: dict[str, Any] = {}
    for key, value in raw.items():
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        state[key] = value

    key_map = ram_key_map(model.config)
    ours = model.state_dict(keep_vars=True)  # parameters only: our buffers are all non-persistent
    stray = sorted(set(key_map.values()) ^ set(ours))
    if stray:  # a bug in the key map or a model built from another config, not a file problem
        raise RamCheckpointError(f"{source}: key map and model disagree on {stray}")

    ignore = [re.compile(pattern) for pattern, _ in RAM_IGNORED]
    missing = [f"{ours_name}  <- official key {key!r}" for key, ours_name in key_map.items() if key not in state]
    unexpected = sorted(k for k in state if k not in key_map and not any(rx.fullmatch(k) for rx in ignore))
    misshaped = []
    for key, ours_name in key_map.items():
        if key not in state:
            continue
        value = state[key]
        if not torch.is_tensor(value):
            misshaped.append(f"{key}: not a tensor ({type(value).__name__})")
        elif tuple(value.shape) != tuple(ours[ours_name].shape):
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(ours[ours_name].shape)}")
    if missing or unexpected or misshaped:
        lines = [f"{source}: {len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped"]
        for title, items in (
            ("missing (our tensors the file does not fill):", missing),
            ("unexpected (official keys neither mapped nor in RAM_IGNORED):", unexpected),
            ("mis-shaped (is the model built from the right preset?):", misshaped),
        ):
            if items:
                lines += [title] + [f"  {item}" for item in items]
        raise RamCheckpointError("\n".join(lines))

    report = RamLoadReport(source=source, ignored=sorted(k for k in state if k not in key_map))
    with torch.no_grad():
        for key, ours_name in key_map.items():
            target = ours[ours_name]
            target.copy_(state[key].to(dtype=target.dtype))
            report.loaded[ours_name] = key
    logger.info("%s: loaded %d tensors, ignored %d keys", source, len(report.loaded), len(report.ignored))
    return report
