"""The reference path for one image: preprocess, forward, postprocess (official `util/inference.predict`)."""

from __future__ import annotations

import torch
from PIL import Image

from bubogpt.grounding.grounding_dino.model import GroundingDino
from bubogpt.grounding.grounding_dino.postprocessing import Detection, postprocess
from bubogpt.grounding.grounding_dino.preprocessing import preprocess_image, tokenize


@torch.no_grad()
def ground(
    model: GroundingDino,
    tokenizer,
    image: Image.Image,
    caption: str,
    box_threshold: float = 0.25,
    text_threshold: float = 0.2,
) -> list[Detection]:
    """Reference path for one image: preprocess, forward, postprocess (BuboGPT's thresholds by default)."""
    device = next(model.parameters()).device
    pixels, _ = preprocess_image(image, model.config)
    text = tokenize(caption, tokenizer, model.config)
    logits, boxes = model(pixels.to(device), *(t.to(device) for t in text))
    original_hw = (image.height, image.width)
    return postprocess(logits, boxes, text.input_ids, tokenizer, original_hw, box_threshold, text_threshold)
