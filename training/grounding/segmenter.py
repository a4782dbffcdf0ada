"""SAM segmenter (tiny): image encoder + box-prompt decoder, single-mask output (mask token 0, as the
pipeline reads it), prompted with the visible truth boxes plus jitter; SAM's 20:1 focal + dice loss of
the upsampled low-res logits against the truth mask in SAM's input frame."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bubogpt.grounding import sam
from training.grounding.losses import dice_loss, sigmoid_focal_loss
from training.grounding.samples import Sample, sam_normalise
from training.steps import train_steps

SEGMENTER_BATCH = 8


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator | None, frame: int, scale: float = 0.06) -> np.ndarray:
    """Noisy copies of xyxy boxes: each side moves by N(0, scale * side length) plus N(0, 1) pixel."""
    if rng is None or len(boxes) == 0:
        return boxes.astype(np.float32)
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    noisy = boxes + rng.normal(0, scale, boxes.shape) * wh + rng.normal(0, 1.0, boxes.shape)
    noisy = np.clip(noisy, 0, frame)
    x0, x1 = np.minimum(noisy[:, 0], noisy[:, 2]), np.maximum(noisy[:, 0], noisy[:, 2])
    y0, y1 = np.minimum(noisy[:, 1], noisy[:, 3]), np.maximum(noisy[:, 1], noisy[:, 3])
    return np.stack([x0, y0, np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)], axis=1).astype(np.float32)


def segmenter_batch(samples: list[Sample], cfg: sam.SamConfig, rng: np.random.Generator | None,
                    max_objects: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (pixels [B, 3, S, S], image index per prompt [M], boxes [M, 1, 4] in the input frame, targets [M, L, L])."""
    pixels = sam_normalise(samples, cfg)
    owners, boxes, masks = [], [], []
    for i, s in enumerate(samples):
        keep = np.arange(len(s.kinds))
        if max_objects is not None and len(keep) > max_objects and rng is not None:
            keep = np.sort(rng.choice(keep, max_objects, replace=False))
        owners += [i] * len(keep)
        boxes.append(jitter_boxes(s.sam_boxes[keep], rng, cfg.img_size))
        masks.append(s.sam_masks[keep])
    return (pixels, torch.tensor(owners, dtype=torch.long), torch.from_numpy(np.concatenate(boxes))[:, None],
            torch.cat(masks).float() / 255.0)


def segmenter_logits(encoder: sam.SamImageEncoder, decoder: sam.SamPromptDecoder, pixels: torch.Tensor,
                     owners: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Low-res mask logits [M, 4g, 4g], one per prompt (each prompt with its own image's embedding)."""
    embeddings = encoder(pixels)
    low_res, _ = decoder(embeddings[owners], boxes)
    return low_res[:, 0]


def segmenter_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's 20:1 focal + dice, on the logits bilinearly upsampled to the targets' size."""
    up = F.interpolate(logits[:, None], targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    focal = sigmoid_focal_loss(up, targets).flatten(1).mean(1)
    dice = dice_loss(up, targets)
    loss = (20 * focal + dice).mean()
    return loss, {"focal": focal.mean().item(), "dice": dice.mean().item()}


def train_segmenter(encoder: sam.SamImageEncoder, decoder: sam.SamPromptDecoder, train: list[Sample], steps: int, *,
                    seed: int, lr: float = 1.5e-3, deadline: float | None = None, progress: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 22)
    train = [s for s in train if s.kinds]
    order: list[int] = []

    def loss_of(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        nonlocal order
        if len(order) < SEGMENTER_BATCH:  # epochs of shuffled images, batches running across epochs
            order += rng.permutation(len(train)).tolist()
        idx, order = order[:SEGMENTER_BATCH], order[SEGMENTER_BATCH:]
        pixels, owners, boxes, targets = segmenter_batch([train[i] for i in idx], encoder.config, rng)
        return segmenter_loss(segmenter_logits(encoder, decoder, pixels, owners, boxes), targets)

    encoder.train()
    decoder.train()
    result = train_steps(list(encoder.parameters()) + list(decoder.parameters()), loss_of, steps=steps, lr=lr,
                         weight_decay=0.01, lr_floor=0.05, deadline=deadline, label="segmenter", progress=progress,
                         log_every=10)
    encoder.eval()
    decoder.eval()
    return result.summary()
