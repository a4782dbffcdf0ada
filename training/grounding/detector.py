"""Grounding DINO detector (tiny, 30 queries), trained DETR-style.

Captions are built with `caption_from_tags` from the image's tags, augmented (`make_caption`): present
kinds dropped now and then, absent kinds added as negatives, the order shuffled. Queries are matched
to objects by the Hungarian algorithm (focal token cost + L1 + GIoU, losses.py); each query's token
logits get a sigmoid focal loss against its object's tokens, matched boxes L1 + GIoU. The same loss is
applied to the final decoder layer, every earlier decoder layer and the encoder's query-selection
proposals (two-stage), all from `GroundingDino.forward_with_aux`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterator

import numpy as np
import torch

from bubogpt.grounding import grounding_dino as gdino
from bubogpt.grounding.grounding_dino.preprocessing import caption_from_tags, tokenize
from training.grounding.losses import DetTarget, detection_loss
from training.grounding.samples import Sample, normalise
from training.steps import train_steps
from training.world.scene import OBJECT_KINDS

DETECTOR_BATCH = 8


def make_caption(sample: Sample, rng: np.random.Generator | None, tag_list: list[str]) -> tuple[list[str], set[str]]:
    """Caption tags for a training image and the kinds whose objects are targets.

    With rng: each present object kind is dropped with p 0.1 (its objects become background), regions
    are kept with p 0.8, 0-2 absent object kinds join as negatives (p 0.5), and the order is shuffled
    half of the time (the pipeline's order is the tag list's).
    """
    kinds = sorted(set(sample.kinds))
    regions = [t for t in sample.tags if t not in OBJECT_KINDS]
    if rng is None:
        tags = kinds + regions
        return sorted(tags, key=lambda t: tag_list.index(t) if t in tag_list else len(tag_list)), set(kinds)
    present = [k for k in kinds if rng.random() >= 0.1]
    if not present and kinds:
        present = [kinds[int(rng.integers(len(kinds)))]]
    tags = present + [r for r in regions if rng.random() < 0.8]
    absent = [k for k in OBJECT_KINDS if k not in kinds]
    if absent and rng.random() < 0.6:
        n = int(rng.integers(1, len(absent) + 1))
        tags += [absent[i] for i in rng.permutation(len(absent))[:n]]
    if rng.random() < 0.5:
        tags = [tags[i] for i in rng.permutation(len(tags))]
    else:
        tags = sorted(tags, key=lambda t: tag_list.index(t) if t in tag_list else len(tag_list))
    return tags, set(present)


def detector_batch(samples: list[Sample], model: gdino.GroundingDino, tokenizer, tag_list: list[str],
                   rng: np.random.Generator | None) -> tuple[torch.Tensor, gdino.GroundingText, list[DetTarget]]:
    """Same-size images -> (pixels, text tensors, targets); with rng: flips and caption augmentation."""
    cfg = model.config
    pixels = torch.stack([s.det_pixels for s in samples])
    flips = (rng.random(len(samples)) < 0.5) if rng is not None else np.zeros(len(samples), dtype=bool)
    if flips.any():
        pixels = torch.where(torch.from_numpy(flips).view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    pixels = normalise(pixels, cfg.pixel_mean, cfg.pixel_std)
    captions, targets_kinds = [], []
    for s in samples:
        tags, kinds = make_caption(s, rng, tag_list)
        captions.append(caption_from_tags(tags))
        targets_kinds.append(kinds)
    text = tokenize(captions, tokenizer, cfg)
    targets = []
    for row, (s, kinds, flip) in enumerate(zip(samples, targets_kinds, flips)):
        keep = [i for i, k in enumerate(s.kinds) if k in kinds]
        boxes = torch.from_numpy(s.boxes[keep]).reshape(-1, 4).clone()
        if flip:
            boxes[:, [0, 2]] = s.width - boxes[:, [2, 0]]
        scale = torch.tensor([s.width, s.height, s.width, s.height], dtype=torch.float32)
        b = boxes / scale
        cxcywh = torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), -1)
        tokens = torch.zeros(len(keep), cfg.max_text_len)
        ids = text.input_ids[row]
        for j, i in enumerate(keep):
            token_id = tokenizer.convert_tokens_to_ids(s.kinds[i])
            hit = (ids == token_id).nonzero().flatten()
            tokens[j, hit[hit < cfg.max_text_len]] = 1.0
        targets.append(DetTarget(cxcywh, tokens))
    return pixels, text, targets


def detector_step_loss(model: gdino.GroundingDino, pixels: torch.Tensor, text: gdino.GroundingText,
                       targets: list[DetTarget]) -> tuple[torch.Tensor, dict[str, float]]:
    """The detection loss of the final layer (its parts returned) + every earlier layer + the proposals."""
    outputs = model.forward_with_aux(pixels, *text)
    text_mask = text.attention_mask.bool()[:, : model.max_text_len]
    num_boxes = max(1.0, float(sum(len(t.boxes) for t in targets)))
    total, parts = detection_loss(outputs, targets, text_mask, num_boxes)
    for aux in outputs["aux"]:
        total = total + detection_loss(aux, targets, text_mask, num_boxes)[0]
    total = total + detection_loss(outputs["enc"], targets, text_mask, num_boxes)[0]
    return total, parts


def size_buckets(samples: list[Sample]) -> dict[tuple[int, int], list[int]]:
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        buckets[tuple(s.det_pixels.shape[1:])].append(i)
    return dict(sorted(buckets.items()))


def detector_batches(samples: list[Sample], batch: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Endless same-size batches: each epoch shuffles every size bucket and the order of the batches."""
    buckets = size_buckets(samples)
    while True:
        batches = []
        for idx in buckets.values():
            perm = [idx[i] for i in rng.permutation(len(idx))]
            batches += [perm[i:i + batch] for i in range(0, len(perm), batch)]
        for i in rng.permutation(len(batches)):
            yield batches[i]


def train_detector(model: gdino.GroundingDino, tokenizer, train: list[Sample], tag_list: list[str], steps: int, *,
                   seed: int, lr: float = 1e-3, deadline: float | None = None, progress: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 33)
    batches = detector_batches(train, DETECTOR_BATCH, rng)

    def loss_of(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = next(batches)
        pixels, text, targets = detector_batch([train[i] for i in idx], model, tokenizer, tag_list, rng)
        return detector_step_loss(model, pixels, text, targets)

    model.train()
    result = train_steps(model.parameters(), loss_of, steps=steps, lr=lr, weight_decay=1e-4, lr_floor=0.05,
                         max_grad_norm=0.5, deadline=deadline, label="detector", progress=progress, log_every=10)
    model.eval()
    return result.summary()
