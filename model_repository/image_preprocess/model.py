"""Triton python-backend model: image bytes -> normalised encoder pixels.

A request whose image cannot be decoded gets an error naming the IMAGE input and the reason; the
other requests of the same batch are unaffected.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from bubogpt.config import VisionEncoderConfig, part_from_dict
from bubogpt.image import ImageDecodeError, decode_image, preprocess_to_array


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "bubo.json")) as handle:
            settings = json.load(handle)
        self.config = part_from_dict(VisionEncoderConfig, settings["vision"])
        self.max_pixels = int(settings["max_pixels"])

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            try:
                pixels = np.stack([preprocess_to_array(decode_image(bytes(data), self.max_pixels), self.config) for data in images])
            except ImageDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"IMAGE: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PIXELS", pixels)]))
        return responses
