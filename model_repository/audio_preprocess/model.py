"""Triton python-backend model: audio bytes -> normalised Kaldi fbank clips.

A request whose audio cannot be decoded gets an error naming the AUDIO input and the reason; the
other requests of the same batch are unaffected.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from bubogpt.audio_features import AudioDecodeError
from bubogpt.onnx_embedder import FrontEnd


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "bubo.json")) as handle:
            settings = json.load(handle)
        self.front_end = FrontEnd.from_settings("audio", settings)  # what the fused audio_embed runs too
        torch.set_num_threads(int(settings.get("torch_threads", 1)))

    def execute(self, requests):
        responses = []
        for request in requests:
            audios = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy().reshape(-1)
            try:
                clips = np.stack([self.front_end(bytes(data)) for data in audios])
            except AudioDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"AUDIO: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("CLIPS", clips)]))
        return responses
