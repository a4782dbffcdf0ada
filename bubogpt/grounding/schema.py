"""Result schema of grounding: what was found in the image, and which words of the answer name it.

``GroundedEntity`` is one detected object (Grounding DINO box + SAM mask); ``EntityMatch`` links a
character span of the LLM's answer to one of them. Both have ``to_dict()``/``from_dict()`` with a
JSON-friendly form in which the mask is a compressed COCO RLE (``{"size": [h, w], "counts": str}``),
which any COCO tool (pycocotools, the gRPC client) can decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bubogpt.grounding import rle as rle_codec

__all__ = ["EntityMatch", "GroundedEntity"]

Mask = np.ndarray | dict[str, Any]


@dataclass
class GroundedEntity:
    """One grounded object.

    index: position in the grounding result; the number shown on overlays and referred to by
        ``EntityMatch.entity_index`` once matches are resolved to entities.
    label: the detector's phrase for it (e.g. "swan").
    score: detector confidence in [0, 1].
    box_xyxy: (x0, y0, x1, y1) in pixels of the original image, floats.
    mask: bool ``(h, w)`` array, or a COCO RLE dict (either form), or None when no mask was made.
    tag: the image tag (RAM) that produced the label, when known.
    """

    index: int
    label: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    mask: Mask | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box_xyxy)
        if len(box) != 4:
            raise ValueError(f"box_xyxy needs 4 numbers, got {len(box)}")
        self.box_xyxy = box  # type: ignore[assignment]
        self.index = int(self.index)
        self.score = float(self.score)
        if self.mask is not None and not isinstance(self.mask, dict):
            mask = np.asarray(self.mask)
            if mask.ndim != 2:
                raise ValueError(f"mask must be 2-D (h, w), got shape {mask.shape}")
            self.mask = mask.astype(bool, copy=False)
        elif isinstance(self.mask, dict) and not rle_codec.is_rle(self.mask):
            raise ValueError("mask dict must be a COCO RLE with 'size' and 'counts'")

    def mask_array(self) -> np.ndarray | None:
        """The mask as a bool ``(h, w)`` array (decoding an RLE if needed)."""
        if self.mask is None:
            return None
        if isinstance(self.mask, dict):
            return rle_codec.decode(self.mask)
        return self.mask

    def mask_rle(self) -> dict[str, Any] | None:
        """The mask as a compressed COCO RLE (``counts`` is a str)."""
        if self.mask is None:
            return None
        if isinstance(self.mask, dict):
            return rle_codec.to_compressed(self.mask)
        return rle_codec.encode(self.mask, compressed=True)

    def mask_area(self) -> int:
        """Foreground pixels of the mask (0 without a mask)."""
        rle = self.mask_rle()
        return 0 if rle is None else rle_codec.area(rle)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form; the mask as compressed COCO RLE, or None."""
        return {
            "index": self.index,
            "label": self.label,
            "score": _json_float(self.score),
            "box_xyxy": [_json_float(v) for v in self.box_xyxy],
            "mask": self.mask_rle(),
            "tag": self.tag,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundedEntity:
        """Inverse of ``to_dict``; the mask stays an RLE until ``mask_array()`` is called."""
        mask = data.get("mask")
        return cls(
            index=int(data["index"]),
            label=str(data["label"]),
            score=_float_or_nan(data.get("score")),
            box_xyxy=tuple(_float_or_nan(v) for v in data["box_xyxy"]),  # type: ignore[arg-type]
            mask=dict(mask) if mask is not None else None,
            tag=data.get("tag"),
        )


@dataclass(frozen=True)
class EntityMatch:
    """A span of the answer text that names an entity.

    phrase: exactly ``answer[start:end]``.
    start, end: character offsets into the answer, end exclusive.
    entity_index: index into the entity list given to the matcher.
    label: that entity's label, as given.
    """

    phrase: str
    start: int
    end: int
    entity_index: int
    label: str

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad span [{self.start}, {self.end})")
        if self.end - self.start != len(self.phrase):
            raise ValueError(f"span [{self.start}, {self.end}) does not fit phrase {self.phrase!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "phrase": self.phrase,
            "start": self.start,
            "end": self.end,
            "entity_index": self.entity_index,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntityMatch:
        return cls(
            phrase=str(data["phrase"]),
            start=int(data["start"]),
            end=int(data["end"]),
            entity_index=int(data["entity_index"]),
            label=str(data["label"]),
        )


def _json_float(value: float) -> float | None:
    # JSON has no NaN/inf; a missing score is better than an invalid document.
    return float(value) if math.isfinite(value) else None


def _float_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)
