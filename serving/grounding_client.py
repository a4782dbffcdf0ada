"""Grounding through Triton's `grounding` model: image bytes -> tags, boxes, scores, labels, masks.

Contract of the `grounding` model (see model_repository/): input IMAGE (BYTES [1]); outputs
TAGS (BYTES [T]), LABELS (BYTES [N]), SCORES (FP32 [N]), BOXES (FP32 [N, 4], xyxy in original pixels),
MASKS (BYTES [N], COCO RLE as JSON).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from bubogpt.grounding.schema import GroundedEntity
from serving.encoders import EncoderUnavailable, InputError
from bubogpt.grounding.pipeline import GroundingResult

log = logging.getLogger(__name__)


class TritonGrounder:
    def __init__(self, url: str, model: str = "grounding", timeout_s: float = 120.0):
        import tritonclient.grpc.aio as grpcclient

        self._grpcclient = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.timeout_s = timeout_s

    async def ground(self, image: bytes) -> GroundingResult:
        from tritonclient.utils import InferenceServerException

        tensor = self._grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=object))
        try:
            result = await self.client.infer(self.model, [tensor], client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            if "IMAGE: " in message:
                raise InputError(f"image: {message.split('IMAGE: ', 1)[1]}") from None
            raise EncoderUnavailable(f"{self.model} failed: {message}") from None
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


def make_grounder(url: str, repository: Path) -> TritonGrounder | None:
    if not (Path(repository) / "grounding" / "config.pbtxt").is_file():
        log.warning("the model repository %s has no grounding model: grounding is off", repository)
        return None
    return TritonGrounder(url)
