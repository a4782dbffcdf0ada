"""Grounding scores: box and mask IoU, greedy one-to-one matching (no Hungarian), precision /
recall / F1 of grounded entities against a scene, and sound-source localisation.

Entities may be dicts {"label", "box_xyxy", "mask"?}, `GroundedEntity`, `SceneObject` or `Entity`;
masks bool arrays or COCO RLE dicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bubogpt.grounding import rle as rle_codec
from training.eval.parsing import KIND_PATTERN
from training.world.scene import Scene, SceneObject


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (continuous coordinates: area = (x1 - x0) * (y1 - y0))."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _mask(mask: Any) -> np.ndarray:
    if isinstance(mask, dict):
        return rle_codec.decode(mask)
    return np.asarray(mask).astype(bool)


def mask_iou(a: Any, b: Any) -> float:
    """IoU of two masks (bool arrays or COCO RLE dicts) of the same size; two empty masks give 0."""
    a, b = _mask(a), _mask(b)
    if a.shape != b.shape:
        raise ValueError(f"mask sizes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def greedy_match(iou: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matches (row, column, iou), best IoU first, each at least `threshold` (no Hungarian)."""
    iou = np.asarray(iou, dtype=float)
    if iou.size == 0:
        return []
    order = np.argsort(-iou, axis=None, kind="stable")
    rows, cols = np.unravel_index(order, iou.shape)
    used_r, used_c, matches = set(), set(), []
    for r, c in zip(rows.tolist(), cols.tolist()):
        value = float(iou[r, c])
        if value < threshold or value <= 0.0:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        matches.append((r, c, value))
    return matches


@dataclass
class Entity:
    label: str
    box: tuple[float, float, float, float]
    mask: Any = None

    @property
    def kind(self) -> str | None:
        return label_kind(self.label)


def label_kind(label: str) -> str | None:
    """The world's object kind a detector phrase names ("red balls" -> "ball"); None if none."""
    m = re.search(rf"\b({KIND_PATTERN}|sky|grass|water|road)s?\b", label.lower())
    return m.group(1) if m else None


def as_entity(obj: Any) -> Entity:
    """dict {"label", "box_xyxy", "mask"?} (scene objects: {"kind", ...}), GroundedEntity, SceneObject or Entity."""
    if isinstance(obj, Entity):
        return obj
    if isinstance(obj, SceneObject):
        return Entity(obj.kind, tuple(float(v) for v in obj.visible_box), obj.mask)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        label = obj.get("label", obj.get("kind"))
        box = obj.get("visible_box_xyxy", obj.get("box_xyxy"))
        return Entity(str(label), tuple(float(v) for v in box), obj.get("mask"))  # type: ignore[arg-type]
    if hasattr(obj, "box_xyxy") and hasattr(obj, "label"):
        return Entity(obj.label, tuple(float(v) for v in obj.box_xyxy), getattr(obj, "mask", None))
    raise TypeError(f"cannot read an entity from {type(obj).__name__}")


@dataclass
class GroundingScore:
    tp: int
    fp: int
    fn: int
    box_ious: list[float]  # of the matches
    mask_ious: list[float]  # of the matches where both have a mask

    def __add__(self, other: GroundingScore) -> GroundingScore:
        """Counts and IoUs of both (micro-averaging over images)."""
        return GroundingScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                              self.box_ious + other.box_ious, self.mask_ious + other.mask_ious)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else (1.0 if not self.fn else 0.0)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def mean_box_iou(self) -> float:
        return float(np.mean(self.box_ious)) if self.box_ious else float("nan")

    @property
    def mean_mask_iou(self) -> float:
        return float(np.mean(self.mask_ious)) if self.mask_ious else float("nan")


def truth_entities(scene: Scene | Mapping[str, Any], regions: bool = False) -> list[Entity]:
    """The scene's objects (and background regions) as entities: visible box, visible mask."""
    if isinstance(scene, Scene):
        out = [as_entity(o) for o in scene.objects]
        if regions:
            out += [Entity(r.label, tuple(float(v) for v in r.box), r.mask) for r in scene.regions]  # type: ignore[misc]
        return out
    out = [as_entity(o) for o in scene["objects"]]
    if regions:
        out += [Entity(r["label"], tuple(float(v) for v in r["box_xyxy"]), r["mask"]) for r in scene.get("regions", [])]  # type: ignore[misc]
    return out


def score_grounding(predictions: Iterable[Any], truth: Scene | Mapping[str, Any] | Iterable[Any], iou_threshold: float = 0.5,
                    match_labels: bool = True) -> GroundingScore:
    """Greedy one-to-one matching by box IoU (only same-kind pairs with `match_labels`); mask IoU of the matches."""
    preds = [as_entity(p) for p in predictions]
    if isinstance(truth, (Scene, Mapping)):
        truths = truth_entities(truth)
    else:
        truths = [as_entity(t) for t in truth]
    iou = np.zeros((len(preds), len(truths)))
    for i, p in enumerate(preds):
        for j, t in enumerate(truths):
            if match_labels and p.kind != t.kind:
                continue
            iou[i, j] = box_iou(p.box, t.box)
    matches = greedy_match(iou, iou_threshold)
    mask_ious = [mask_iou(preds[i].mask, truths[j].mask) for i, j, _ in matches
                 if preds[i].mask is not None and truths[j].mask is not None]
    return GroundingScore(tp=len(matches), fp=len(preds) - len(matches), fn=len(truths) - len(matches),
                          box_ious=[v for _, _, v in matches], mask_ious=mask_ious)


def localisation_hit(entities: Iterable[Any], source: Any, iou_threshold: float = 0.5, mode: str = "iou") -> bool:
    """Sound-source localisation: an entity of the source's kind overlaps the source.

    mode "iou": box IoU >= threshold with the source's visible box; "point": the entity's box centre
    falls inside the source's visible mask (or box when there is no mask).
    """
    target = as_entity(source)
    for e in map(as_entity, entities):
        if e.kind != target.kind:
            continue
        if mode == "iou" and box_iou(e.box, target.box) >= iou_threshold:
            return True
        if mode == "point":
            cx, cy = (e.box[0] + e.box[2]) / 2, (e.box[1] + e.box[3]) / 2
            if target.mask is not None:
                m = _mask(target.mask)
                if 0 <= int(cy) < m.shape[0] and 0 <= int(cx) < m.shape[1] and m[int(cy), int(cx)]:
                    return True
            elif target.box[0] <= cx < target.box[2] and target.box[1] <= cy < target.box[3]:
                return True
    return False
