"""The RAM tagger: Swin image encoder + tagging head -> one probability per tag.

What RAM computes, step by step (official `ram/models/ram.py`, `generate_tag`):
    x       = SwinTransformer(pixels)            # [B, 1 + L, 1536]: mean-pooled token, then the L patches
    image   = image_proj(x)                      # Linear(1536, 512)
    labels  = relu(wordvec_proj(label_embed))    # [num_tags, 512] -> Linear(512, 768) -> ReLU
    h       = tagging_head(labels, image)        # 2 BERT layers, cross-attention ONLY
    probs   = sigmoid(fc(h).squeeze(-1))         # Linear(768, 1) per tag -> [B, num_tags]
RAM computes `image_cls_embeds` / `image_spatial_embeds` but only uses them for the batch size: the
tagging head attends to ALL tokens, the pooled one included, with an all-ones mask (additive 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding.ram.backbone import SwinTransformer
from bubogpt.grounding.ram.config import RamConfig
from bubogpt.grounding.ram.tagging_head import TaggingHead
from bubogpt.grounding.swin import WindowAttention


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
