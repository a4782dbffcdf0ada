"""EVA-ViT-g, the frozen image encoder of BLIP-2 / MiniGPT-4 / BuboGPT, plus BLIP-2's `ln_vision`.

What BuboGPT runs (`use_blip_vision: True`): EVA's `VisionTransformer` built with 39 of the 40 blocks of
`eva_vit_g.pth`, absolute position embeddings, no relative position bias, no layer scale, no final norm
and no head; then `ln_vision`, a plain LayerNorm (eps 1e-5) whose weights live in the BLIP-2 checkpoint.
We fold `ln_vision` into this module so that one network maps pixels to the Q-Former's input.

The attention has no bias on the fused qkv projection; instead the checkpoint carries a separate q bias
and v bias, and the key bias is zero (softmax is invariant to a per-query constant, so a key bias would
be a no-op anyway). We keep that parameterisation so the checkpoint loads one tensor to one parameter.

Forward is free of data-dependent Python control flow so that it exports to ONNX / TensorRT.
Weights: `bubogpt.official_checkpoints.load_eva_vit_checkpoint` (trunk) and
`load_blip2_checkpoint` (`ln_vision`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.config import VisionEncoderConfig


class EvaAttention(nn.Module):
    """Multi-head self-attention with a bias-free qkv projection plus separate q and v biases."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # The key bias is identically zero in EVA; build the fused bias so one matmul does q, k and v.
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as EVA
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class EvaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, nn.GELU's default


class EvaBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EvaAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = EvaMLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViT(nn.Module):
    """pixel_values [B, 3, H, W] (CLIP-normalised, H = W = image_size) -> [B, 1 + num_patches, width].

    Output token 0 is the class token; the whole sequence goes to the Q-Former's cross-attention.
    """

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.patch_embed = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, width))
        self.blocks = nn.ModuleList(
            EvaBlock(width, config.num_heads, config.mlp_dim, config.norm_eps) for _ in range(config.depth)
        )
        # BLIP-2's `ln_vision`; applied to every token before the Q-Former.
        self.ln_vision = nn.LayerNorm(width, eps=config.out_norm_eps)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Only so that an unloaded model computes something finite; real weights come from checkpoints.
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [B, num_patches, width]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.ln_vision(x)
