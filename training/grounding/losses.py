"""The grounding nets' losses, and DETR's Hungarian matching of detector queries to objects.

    sigmoid_focal_loss, dice_loss       SAM's mask losses (focal also scores the detector's tokens)
    generalized_box_iou                 GIoU of xyxy boxes (cost and loss of the detector's boxes)
    match_queries                       one query per object: focal token cost + L1 + GIoU
    detection_loss                      focal token loss + L1 + GIoU of the matched boxes, one output set
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

# Matching cost and loss weights of Grounding DINO's training (class, L1 box, GIoU).
COST_CLASS, COST_BBOX, COST_GIOU = 2.0, 5.0, 2.0
LOSS_CLASS, LOSS_BBOX, LOSS_GIOU = 2.0, 5.0, 2.0


@dataclass
class DetTarget:
    boxes: torch.Tensor  # [n, 4] cx, cy, w, h normalised
    tokens: torch.Tensor  # [n, L] positive map (1 on the object's tag tokens)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Elementwise focal loss (RetinaNet); targets may be soft."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[M, ...] -> [M]."""
    prob = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes [N, 4] x [M, 4] -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union.clamp(min=1e-7)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def hungarian_match(cost: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets): (rows, cols), by column."""
    c = np.asarray(cost.detach().cpu() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    if c.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


@torch.no_grad()
def match_queries(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, targets: list[DetTarget]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hungarian matching per image: focal token cost (mean over the object's tokens) + L1 + GIoU."""
    out = []
    for logits, boxes, t in zip(pred_logits, pred_boxes, targets):
        if len(t.boxes) == 0:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        prob = logits.float().sigmoid()  # [Q, L] (0 outside the caption)
        alpha, gamma = 0.25, 2.0
        neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        tok = t.tokens / t.tokens.sum(1, keepdim=True).clamp(min=1)
        cost_class = (pos - neg) @ tok.T  # [Q, n]
        cost_bbox = torch.cdist(boxes, t.boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(t.boxes))
        cost = COST_CLASS * cost_class + COST_BBOX * cost_bbox + COST_GIOU * cost_giou
        out.append(hungarian_match(cost))
    return out


def detection_loss(outputs: dict[str, torch.Tensor], targets: list[DetTarget], text_mask: torch.Tensor,
                   num_boxes: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal token loss on every query x caption token + L1 and GIoU of matched boxes, for one output set."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    matches = match_queries(logits, boxes, targets)
    length = text_mask.shape[1]
    target_tokens = torch.zeros_like(logits[:, :, :length])
    src_boxes, tgt_boxes = [], []
    for b, ((rows, cols), t) in enumerate(zip(matches, targets)):
        if len(rows):
            target_tokens[b, torch.from_numpy(rows)] = t.tokens[torch.from_numpy(cols)][:, :length]
            src_boxes.append(boxes[b, torch.from_numpy(rows)])
            tgt_boxes.append(t.boxes[torch.from_numpy(cols)])
    valid = text_mask[:, None, :].expand_as(target_tokens)
    focal = sigmoid_focal_loss(logits[:, :, :length][valid], target_tokens[valid]).sum() / num_boxes
    if src_boxes:
        sb, tb = torch.cat(src_boxes), torch.cat(tgt_boxes)
        l1 = F.l1_loss(sb, tb, reduction="sum") / num_boxes
        giou = (1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(sb), box_cxcywh_to_xyxy(tb)))).sum() / num_boxes
    else:
        l1 = giou = logits.sum() * 0.0
    loss = LOSS_CLASS * focal + LOSS_BBOX * l1 + LOSS_GIOU * giou
    return loss, {"cls": focal.item(), "l1": l1.item(), "giou": giou.item()}
