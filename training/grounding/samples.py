"""A world corpus's grounding images, decoded once into what each of the three nets reads.

Every image becomes uint8 tensors kept in memory (RAM input, Grounding DINO input, SAM's padded input
frame) with its truth in each net's frame, so training never decodes a JPEG again.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bubogpt.grounding import grounding_dino as gdino
from bubogpt.grounding import sam
from bubogpt.grounding.pipeline import GroundingPipeline


@dataclass
class Sample:
    index: int
    width: int
    height: int
    tags: list[str]
    kinds: list[str]  # per object
    boxes: np.ndarray  # [n, 4] visible xyxy, original pixels
    tag_pixels: torch.Tensor  # uint8 [3, S, S] RAM input (resized, not normalised)
    det_pixels: torch.Tensor  # uint8 [3, h, w] Grounding DINO input
    sam_pixels: torch.Tensor  # uint8 [3, S, S] SAM input frame (zero-padded bottom/right)
    sam_hw: tuple[int, int]
    sam_boxes: np.ndarray  # [n, 4] boxes in SAM's input frame
    sam_masks: torch.Tensor  # uint8 [n, L, L] soft truth masks (x255) in SAM's input frame at 2x the low-res size


def _to_uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_samples(corpus_root: str | Path, pipeline: GroundingPipeline, limit: int | None = None,
                 progress: bool = True) -> list[Sample]:
    """Decodes every grounding image of a world corpus into the three nets' inputs."""
    from tqdm import tqdm

    from training.world.datasets import read_grounding

    rcfg = pipeline.tagger.config
    dcfg = pipeline.detector.config
    scfg = pipeline.segmenter_encoder.config
    target = 2 * scfg.low_res_size
    samples: list[Sample] = []
    for i, (data, scene) in enumerate(tqdm(read_grounding(corpus_root), desc="decode", disable=not progress, unit="img")):
        if limit is not None and i >= limit:
            break
        image = Image.open(io.BytesIO(data)).convert("RGB")
        tag_pixels = _to_uint8_chw(image.resize((rcfg.image_size, rcfg.image_size), Image.Resampling.BILINEAR))
        h, w = gdino.resized_size(image.width, image.height, dcfg.image_size, dcfg.max_image_size)
        det_pixels = _to_uint8_chw(image.resize((w, h), Image.BILINEAR))
        sh, sw = sam.get_preprocess_shape(image.height, image.width, scfg.img_size)
        sam_pixels = torch.zeros(3, scfg.img_size, scfg.img_size, dtype=torch.uint8)
        sam_pixels[:, :sh, :sw] = _to_uint8_chw(image.resize((sw, sh), Image.Resampling.BILINEAR))
        objects = scene.objects
        boxes = np.array([o.visible_box for o in objects], dtype=np.float32).reshape(-1, 4)
        if objects:
            masks = torch.from_numpy(np.stack([o.mask for o in objects])).float()[:, None]
            masks = F.interpolate(masks, (sh, sw), mode="bilinear", align_corners=False)
            framed = torch.zeros(len(objects), 1, scfg.img_size, scfg.img_size)
            framed[:, :, :sh, :sw] = masks
            framed = F.interpolate(framed, (target, target), mode="area")[:, 0]
            sam_masks = (framed.clamp(0, 1) * 255).round().to(torch.uint8)
        else:
            sam_masks = torch.zeros(0, target, target, dtype=torch.uint8)
        samples.append(Sample(
            index=i, width=image.width, height=image.height, tags=list(scene.tags), kinds=[o.kind for o in objects],
            boxes=boxes, tag_pixels=tag_pixels, det_pixels=det_pixels, sam_pixels=sam_pixels, sam_hw=(sh, sw),
            sam_boxes=sam.transform_boxes(boxes, (image.height, image.width), scfg).reshape(-1, 4), sam_masks=sam_masks,
        ))
    return samples


def load_images(corpus_root: str | Path, indices: list[int]) -> list[tuple[Image.Image, Any]]:
    """(RGB image, scene) of the corpus's grounding items at `indices` (read order)."""
    from training.world.datasets import read_grounding

    wanted = set(indices)
    out = []
    for i, (data, scene) in enumerate(read_grounding(corpus_root)):
        if i > max(wanted, default=-1):
            break
        if i in wanted:
            out.append((Image.open(io.BytesIO(data)).convert("RGB"), scene))
    return out


def normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x / 255 - mean) / std, as the nets' preprocessing."""
    x = pixels.float().div(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def sam_normalise(samples: list[Sample], cfg: sam.SamConfig) -> torch.Tensor:
    """SAM normalises the 0..255 values and pads with zeros after normalising."""
    x = torch.stack([s.sam_pixels for s in samples]).float()
    x = (x - torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(cfg.pixel_std).view(1, 3, 1, 1)
    for i, s in enumerate(samples):
        h, w = s.sam_hw
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    return x
