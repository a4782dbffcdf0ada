"""SAM's mask decoder (official `mask_decoder.MaskDecoder`), run in single-mask mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.sam.common import LayerNorm2d
from bubogpt.grounding.sam.config import SamConfig
from bubogpt.grounding.sam.transformer import SamTwoWayTransformer


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
