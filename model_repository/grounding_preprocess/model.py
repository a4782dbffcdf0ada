"""Triton python-backend model: image bytes -> the inputs of the three grounding networks.

Outputs per image: TAGGER_PIXELS (RAM, square), DETECTOR_PIXELS (Grounding DINO, short side 800,
its own size), SAM_PIXELS (SAM, long side resized and padded) and SIZES (original h, w and SAM's
resized h, w). Undecodable images get an error naming IMAGE.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from bubogpt.grounding import grounding_dino, ram, sam
from bubogpt.grounding.grounding_dino.config import GDINO_PRESETS
from bubogpt.image import ImageDecodeError, decode_image


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "bubo.json")) as handle:
            settings = json.load(handle)
        self.max_pixels = int(settings["max_pixels"])
        self.tagger_cfg = ram.RAM_PRESETS[settings["tagger"]]
        self.detector_cfg = GDINO_PRESETS[settings["detector"]]
        self.sam_cfg = sam.SAM_PRESETS[settings["segmenter"]]
        # resizes of one picture: a thread pool as wide as the machine only spins against the other
        # stubs and ONNX Runtime (benchmarks/grounding_profile.py measures both)
        torch.set_num_threads(int(settings.get("torch_threads", 1)))

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            if data.shape[0] != 1:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("IMAGE: send one image per request", pb_utils.TritonError.INVALID_ARG)))
                continue
            try:
                image = decode_image(bytes(data[0]), self.max_pixels)
            except ImageDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"IMAGE: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            tagger = ram.preprocess_image(image, self.tagger_cfg).numpy()
            detector, _ = grounding_dino.preprocess_image(image, self.detector_cfg)
            sam_pixels, (input_h, input_w) = sam.preprocess_image(np.asarray(image, dtype=np.uint8), self.sam_cfg)
            sizes = np.array([[image.height, image.width, input_h, input_w]], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("TAGGER_PIXELS", tagger[None].astype(np.float32)),
                pb_utils.Tensor("DETECTOR_PIXELS", detector.numpy().astype(np.float32)),
                pb_utils.Tensor("SAM_PIXELS", sam_pixels[None].astype(np.float32)),
                pb_utils.Tensor("SIZES", sizes),
            ]))
        return responses
