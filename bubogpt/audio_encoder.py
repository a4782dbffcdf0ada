"""ImageBind-huge audio encoder, as BuboGPT runs it (`with_bind_head: False`).

ImageBind's audio path: a bias-free Conv2d patch stem over the fbank "image" [1, 128 mel, 204 frames]
(kernel 16, stride 10 -> 12 x 19 patches), a LayerNorm on the patch tokens, a class token and a learned
position embedding; then 12 pre-norm blocks whose attention is torch's `nn.MultiheadAttention` with
`add_bias_kv=True` (a learned key and value are appended to every sequence, so each query can also
attend to a "null" slot). BuboGPT drops ImageBind's head (LayerNorm + projection to 1024) and keeps the
post-processor: each token is L2-normalised and multiplied by the fixed logit scale 20. An audio is
cut into S clips (6 plus one global clip); every clip is encoded alone and the token features are
averaged over the clips.

We implement the attention ourselves (not nn.MultiheadAttention) so parameter names and ONNX export are
ours; the maths is the same: one fused in-projection, bias_k / bias_v concatenated AFTER the projected
keys / values, softmax(q k^T / sqrt(head_dim)) v, output projection.
Weights: `bubogpt.official_checkpoints.load_imagebind_audio_checkpoint`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.config import AudioEncoderConfig

# ImageBind's LearnableLogitScaling clips the scale at this value.
MAX_LOGIT_SCALE = 100.0


class BiasKVAttention(nn.Module):
    """Self-attention equivalent to nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=True)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.in_proj = nn.Linear(dim, 3 * dim)  # rows: q, k, v (torch's in_proj_weight layout)
        self.bias_k = nn.Parameter(torch.zeros(1, 1, dim))
        self.bias_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        # The learned bias slot is appended after the sequence (position `tokens`), as torch does.
        k = torch.cat((k, self.bias_k.expand(batch, -1, -1)), dim=1)
        v = torch.cat((v, self.bias_v.expand(batch, -1, -1)), dim=1)
        q = q.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(batch, tokens + 1, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(batch, tokens + 1, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.out_proj(out)


class AudioMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, nn.GELU's default


class AudioBlock(nn.Module):
    """Pre-norm block (ImageBind's BlockWithMasking without mask, drop-path or layer scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = BiasKVAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = AudioMLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageBindAudioEncoder(nn.Module):
    """clips [B, S, 1, num_mel_bins, target_frames] -> clip-averaged tokens [B, num_tokens, width]."""

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.patch_embed = nn.Conv2d(
            1, width, kernel_size=config.patch_size, stride=config.patch_stride, bias=False
        )
        # ImageBind builds this LayerNorm with torch's default eps (1e-5), unlike the blocks' 1e-6.
        self.patch_norm = nn.LayerNorm(width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, width))
        self.blocks = nn.ModuleList(
            AudioBlock(width, config.num_heads, config.mlp_dim, config.norm_eps) for _ in range(config.depth)
        )
        # ImageBind keeps the audio scale as a (non-learnable) buffer in its checkpoint; so do we.
        self.register_buffer("log_logit_scale", torch.tensor(math.log(config.logit_scale), dtype=torch.float32))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Only so that an unloaded model computes something finite; real weights come from checkpoints.
        nn.init.normal_(self.cls_token, std=self.config.width**-0.5)
        nn.init.normal_(self.pos_embed, std=self.config.width**-0.5)
        nn.init.normal_(self.patch_embed.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, BiasKVAttention):
                nn.init.xavier_normal_(module.bias_k)
                nn.init.xavier_normal_(module.bias_v)

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [N, 1, mel, frames] -> normalised, scaled tokens [N, num_tokens, width] (one per clip)."""
        x = self.patch_embed(clips).flatten(2).transpose(1, 2)  # [N, rows*cols, width], row-major
        x = self.patch_norm(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        # No final norm in the trunk; ImageBind's audio post-processor: L2 normalise, then scale.
        scale = self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return F.normalize(x, dim=-1) * scale

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, num_clips = clips.shape[0], clips.shape[1]
        tokens = self.encode_clips(clips.flatten(0, 1))
        return tokens.reshape(batch, num_clips, tokens.shape[1], tokens.shape[2]).mean(dim=1)
