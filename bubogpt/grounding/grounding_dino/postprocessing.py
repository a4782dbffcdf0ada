"""Grounding DINO's post-processing: one image's raw outputs -> detections in original pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Detection(NamedTuple):
    phrase: str
    score: float
    box_xyxy: tuple[float, float, float, float]  # pixels of the original image


def postprocess(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    input_ids: torch.Tensor | Sequence[int],
    tokenizer,
    original_hw: tuple[int, int],
    box_threshold: float = 0.25,
    text_threshold: float = 0.2,
) -> list[Detection]:
    """One image's outputs -> detections, as the official `predict` + `get_phrases_from_posmap`.

    pred_logits [Q, L] or [1, Q, L]; pred_boxes [Q, 4] or [1, Q, 4]; input_ids [T] or [1, T].
    A query is kept when its best token probability (sigmoid) exceeds `box_threshold`; its phrase is
    the decoded tokens whose probability exceeds `text_threshold`, never the first token ([CLS]) nor
    any from index L - 1 on (the official right_idx 255 for L 256), with "." removed; its score is the
    best token probability. Boxes go from normalised cx, cy, w, h to x0, y0, x1, y1 in the original
    image's pixels (BuboGPT scales by [W, H, W, H]; the resize keeps the aspect ratio up to rounding).
    """
    if pred_logits.dim() == 3:
        if pred_logits.shape[0] != 1:
            raise ValueError("postprocess takes one image; index the batch first")
        pred_logits, pred_boxes = pred_logits[0], pred_boxes[0]
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError("postprocess takes one image's input_ids; index the batch first")
        ids = ids[0]
    ids = ids.tolist()
    probs = pred_logits.detach().float().cpu().sigmoid()
    boxes = pred_boxes.detach().float().cpu()
    keep = probs.max(dim=1)[0] > box_threshold
    right_idx = probs.shape[1] - 1
    height, width = original_hw
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    detections = []
    for prob, box in zip(probs[keep], boxes[keep]):
        posmap = prob > text_threshold
        posmap[0] = False
        posmap[right_idx:] = False
        token_ids = [ids[i] for i in posmap.nonzero(as_tuple=True)[0].tolist() if i < len(ids)]
        phrase = tokenizer.decode(token_ids, clean_up_tokenization_spaces=True).replace(".", "")
        box = box * scale
        x0, y0 = box[0] - box[2] / 2, box[1] - box[3] / 2
        detections.append(
            Detection(phrase, float(prob.max()), (float(x0), float(y0), float(x0 + box[2]), float(y0 + box[3])))
        )
    return detections
