"""The network a server runs once per prompt batch: box prompt encoder + mask decoder.

The official `Sam` wraps image encoder, prompt encoder and mask decoder in one module; we export the
image encoder on its own (once per image) and this decoder (once per set of boxes), so the two scale
independently.
"""

from __future__ import annotations

import torch
from torch import nn

from bubogpt.grounding.sam.config import SamConfig
from bubogpt.grounding.sam.mask_decoder import SamMaskDecoder
from bubogpt.grounding.sam.prompt_encoder import SamBoxPromptEncoder


class SamPromptDecoder(nn.Module):
    """Box prompts -> one mask per box: (embeddings [B, C, g, g], boxes [B, N, 4]) -> ([B, N, 4g, 4g], [B, N]).

    Boxes are (x0, y0, x1, y1) in the padded S x S input frame (see `transform_boxes`). The N boxes of
    an image are folded into the batch (the image embedding is broadcast to each), so B and N are both
    dynamic axes in an exported graph. Outputs are mask logits (threshold 0.0) and predicted IoU.
    """

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        self.config = cfg
        self.prompt_encoder = SamBoxPromptEncoder(cfg)
        self.mask_decoder = SamMaskDecoder(cfg)

    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_boxes = boxes.shape[1]  # traced as a dynamic dimension, not a constant
        side = self.config.low_res_size
        dim, g = self.config.prompt_embed_dim, self.config.embed_size
        sparse = self.prompt_encoder.embed_boxes(boxes)  # [B*N, 2, C], row b*N + n
        src = image_embeddings.unsqueeze(1).expand(-1, num_boxes, -1, -1, -1).reshape(-1, dim, g, g)
        src = src + self.prompt_encoder.no_mask_dense()
        masks, iou = self.mask_decoder(src, self.prompt_encoder.dense_pe(), sparse)
        return masks.reshape(-1, num_boxes, side, side), iou.reshape(-1, num_boxes)
