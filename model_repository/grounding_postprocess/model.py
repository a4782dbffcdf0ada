"""Triton python-backend model: tagger probabilities + SAM image embeddings -> grounded entities.

Per image: tags (RAM's per-class thresholds) -> caption -> the `detector` model (BLS call; box and
text thresholds applied here) -> boxes in original pixels -> the `sam_prompt_decoder` model (BLS,
one mask per box) -> masks at the original size, small holes filled -> COCO RLE.
Same functions as the PyTorch reference, bubogpt.grounding.pipeline.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from bubogpt.grounding import grounding_dino, ram, sam
from bubogpt.grounding.grounding_dino.config import GDINO_PRESETS
from bubogpt.grounding.grounding_dino.preprocessing import caption_from_tags, load_tokenizer, tokenize
from bubogpt.grounding.pipeline import GroundingConfig, clean_phrase, clip_box, fill_small_holes
from bubogpt.grounding.rle import encode

DETECTOR_INPUTS = ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS", "TEXT_SELF_ATTENTION_MASKS", "POSITION_IDS")


def _call(model, inputs, outputs):
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=list(outputs),
        inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in inputs.items()],
    )
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "bubo.json")) as handle:
            settings = json.load(handle)
        self.config = GroundingConfig(**settings["config"])
        self.tag_list = settings["tag_list"]
        self.thresholds = torch.tensor(settings["thresholds"], dtype=torch.float32)
        self.deleted = tuple(settings.get("deleted_tags", ()))
        text_dir = os.path.join(version_dir, "text_encoder")
        self.tokenizer = load_tokenizer(text_dir)
        self.detector_cfg = GDINO_PRESETS[self.config.detector].with_text_encoder_dir(text_dir)
        self.sam_cfg = sam.SAM_PRESETS[self.config.segmenter]
        torch.set_num_threads(1)

    def ground_one(self, probs, detector_pixels, embeddings, sizes):
        height, width, input_h, input_w = (int(v) for v in sizes)
        tags = ram.select_tags(probs, self.thresholds, self.tag_list, self.deleted)
        empty = (tags, [], np.zeros((0,), np.float32), np.zeros((0, 4), np.float32), [])
        if not tags:
            return empty
        text = tokenize(caption_from_tags(tags), self.tokenizer, self.detector_cfg)
        logits, boxes = _call("detector", {"PIXELS": detector_pixels[None], **{name: t.numpy() for name, t in zip(DETECTOR_INPUTS, text)}},
                              ("PRED_LOGITS", "PRED_BOXES"))
        detections = grounding_dino.postprocess(torch.from_numpy(logits), torch.from_numpy(boxes), text.input_ids,
                                                self.tokenizer, (height, width), self.config.box_threshold, self.config.text_threshold)
        detections = [d._replace(phrase=clean_phrase(d.phrase)) for d in detections[: self.config.max_entities]]
        detections = [d for d in detections if d.phrase]
        if not detections:
            return empty
        xyxy = np.array([clip_box(d.box_xyxy, width, height) for d in detections], dtype=np.float32)
        prompts = sam.transform_boxes(xyxy, (height, width), self.sam_cfg)
        low_res, _ = _call("sam_prompt_decoder", {"EMBEDDINGS": embeddings[None], "BOXES": prompts[None]}, ("LOW_RES_MASKS", "IOU"))
        mask_logits = sam.postprocess_masks(torch.from_numpy(low_res[0]), (input_h, input_w), (height, width), self.sam_cfg)
        masks = [fill_small_holes(m, self.config.hole_area) for m in sam.masks_from_logits(mask_logits).numpy()]
        rles = [json.dumps(encode(m)) for m in masks]
        return tags, [d.phrase for d in detections], np.array([d.score for d in detections], np.float32), xyxy, rles

    def execute(self, requests):
        responses = []
        for request in requests:
            get = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()  # noqa: E731
            try:
                tags, labels, scores, boxes, masks = self.ground_one(get("PROBS")[0], get("DETECTOR_PIXELS")[0], get("EMBEDDINGS")[0], get("SIZES")[0])
            except Exception as exc:  # noqa: BLE001 - reported to this request only
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"grounding failed: {exc}")))
                continue
            strings = lambda items: np.array([[s.encode() for s in items]], dtype=object).reshape(1, len(items))  # noqa: E731
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("TAGS", strings(tags)),
                pb_utils.Tensor("LABELS", strings(labels)),
                pb_utils.Tensor("SCORES", scores[None]),
                pb_utils.Tensor("BOXES", boxes[None]),
                pb_utils.Tensor("MASKS", strings(masks)),
            ]))
        return responses
