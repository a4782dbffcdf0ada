"""Grounding through Triton's `grounding` model: image bytes -> tags, boxes, scores, labels, masks.

Contract of the `grounding` model (see model_repository/): input IMAGE (BYTES [1]); outputs
TAGS (BYTES [T]), LABELS (BYTES [N]), SCORES (FP32 [N]), BOXES (FP32 [N, 4], xyxy in original pixels),
MASKS (BYTES [N], COCO RLE as JSON). Results are cached by image content, like the embeddings: the
later turns of a grounded chat about one picture do not ground it again.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from bubogpt.grounding.pipeline import GroundingResult
from bubogpt.grounding.schema import GroundedEntity
from serving.encoders import CachedCalls, ContentCache
from serving.triton_client import TritonClient

log = logging.getLogger(__name__)


class TritonGrounder:
    def __init__(self, triton: TritonClient, model: str = "grounding", cache_entries: int = 64):
        self.triton = triton
        self.model = model
        self.cache = ContentCache(cache_entries)
        self._calls = CachedCalls(triton, self.cache)

    async def ground(self, image: bytes) -> GroundingResult:
        self.triton.part.require()

        def submit():
            tensor = self.triton.grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[image]], dtype=object))
            return self.triton.submit(self.model, [tensor], parse_grounding, {"IMAGE": "image"})

        result, _ = await self._calls.get(ContentCache.key(self.model, image), submit, "grounding")
        return result


def parse_grounding(result) -> GroundingResult:
    # zero entities come back as empty tensors (or none at all)
    def strings(name):
        array = result.as_numpy(name)
        return [] if array is None else [t.decode() for t in array.reshape(-1)]

    tags = strings("TAGS")
    labels = strings("LABELS")
    scores = result.as_numpy("SCORES").reshape(-1) if labels else []
    boxes = result.as_numpy("BOXES").reshape(-1, 4) if labels else []
    masks = [json.loads(m) for m in strings("MASKS")]
    entities = [
        GroundedEntity(index=i, label=label, score=float(score), box_xyxy=tuple(float(v) for v in box), mask=mask)
        for i, (label, score, box, mask) in enumerate(zip(labels, scores, boxes, masks))
    ]
    return GroundingResult(tags=tags, entities=entities)


def make_grounder(triton: TritonClient, served_models) -> TritonGrounder | None:
    """A grounder when the Triton serves the `grounding` model (`served_models`: the names it serves)."""
    if "grounding" not in served_models:
        log.warning("the Triton at %s has no grounding model: grounding is off", triton.url)
        return None
    return TritonGrounder(triton)
