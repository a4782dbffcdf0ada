"""Pre- and post-processing, per image and outside the exported graphs (official `ResizeLongestSide`,
`SamPredictor.set_image` and `Sam.postprocess_masks`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bubogpt.grounding.sam.config import SAM_MASK_THRESHOLD, SamConfig


def get_preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to `long_side`, rounded half up (official ResizeLongestSide)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def preprocess_image(image: np.ndarray, cfg: SamConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 [H, W, 3] -> (pixels float32 [3, S, S], resized (h, w)).

    Official SamPredictor.set_image: resize the longest side to S with PIL bilinear (torchvision's
    `resize(to_pil_image(x))` is PIL's resize), normalise with SAM's mean/std, zero-pad bottom/right.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"preprocess_image expects an RGB uint8 array [H, W, 3], got {desc}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"preprocess_image: empty image ({h}x{w})")
    new_h, new_w = get_preprocess_shape(h, w, cfg.img_size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    mean = np.asarray(cfg.pixel_mean, dtype=np.float32)
    std = np.asarray(cfg.pixel_std, dtype=np.float32)
    normalised = (resized.astype(np.float32) - mean) / std
    pixels = np.zeros((3, cfg.img_size, cfg.img_size), dtype=np.float32)
    pixels[:, :new_h, :new_w] = normalised.transpose(2, 0, 1)
    return pixels, (new_h, new_w)


def transform_boxes(boxes: Any, original_hw: tuple[int, int], cfg: SamConfig) -> np.ndarray:
    """Boxes [..., 4] (x0, y0, x1, y1) in original pixels -> the S x S input frame, float32.

    Same arithmetic as the official `ResizeLongestSide.apply_boxes` (float64, then float32 as the
    predictor feeds the model): x scales by new_w / old_w and y by new_h / old_h, the rounded sizes.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4], got {boxes.shape}")
    old_h, old_w = original_hw
    new_h, new_w = get_preprocess_shape(old_h, old_w, cfg.img_size)
    scale = np.array([new_w / old_w, new_h / old_h, new_w / old_w, new_h / old_h])
    return (boxes * scale).astype(np.float32)


def inverse_transform_boxes(boxes: Any, original_hw: tuple[int, int], cfg: SamConfig) -> np.ndarray:
    """The inverse of `transform_boxes`: input-frame boxes [..., 4] -> original pixels, float32."""
    boxes = np.asarray(boxes, dtype=np.float64)
    old_h, old_w = original_hw
    new_h, new_w = get_preprocess_shape(old_h, old_w, cfg.img_size)
    scale = np.array([old_w / new_w, old_h / new_h, old_w / new_w, old_h / new_h])
    return (boxes * scale).astype(np.float32)


def postprocess_masks(
    low_res_logits: torch.Tensor | np.ndarray,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    cfg: SamConfig,
) -> torch.Tensor:
    """Mask logits [..., 4g, 4g] -> logits [..., H, W] at the original image size (official `postprocess_masks`).

    Upsample to S x S (bilinear, align_corners=False), crop the resized image's area (drops the
    padding), upsample to the original size. `input_hw` is the resized size from `preprocess_image`.
    """
    logits = torch.as_tensor(low_res_logits, dtype=torch.float32)
    if logits.ndim < 2:
        raise ValueError(f"postprocess_masks expects [..., h, w] logits, got shape {tuple(logits.shape)}")
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:])
    x = F.interpolate(x, (cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    x = F.interpolate(x, tuple(original_hw), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])


def masks_from_logits(logits: torch.Tensor, threshold: float = SAM_MASK_THRESHOLD) -> torch.Tensor:
    """Boolean masks: logit > threshold (0.0, the official `Sam.mask_threshold`)."""
    return logits > threshold
