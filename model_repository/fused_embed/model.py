"""Triton python-backend model: image or audio bytes -> EMBEDS [32, llm_width], in one process.

On CPU machines this is `image_embed` / `audio_embed` itself, in place of the three-model ensemble
(preprocess -> encoder -> Q-Former) that GPU repositories keep for their TensorRT plans: the same
front end and the same two ONNX graphs (`bubogpt.onnx_embedder`), run back to back in one stub, so a
request crosses no shared-memory hop between them and two stub processes fewer per modality compete
for the cores (benchmarks/README.md, "fused embedding models").

The requests the dynamic batcher hands over together are decoded one by one and run through the
networks as one batch. A request whose bytes cannot be decoded gets an error naming its input; the
others of the batch are unaffected.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from bubogpt.onnx_embedder import DECODE_ERRORS, FrontEnd, OnnxEmbedder


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "bubo.json")) as handle:
            settings = json.load(handle)
        modality = settings["modality"]
        self.input = "IMAGE" if modality == "image" else "AUDIO"
        front_end = FrontEnd.from_settings(modality, settings)
        torch.set_num_threads(int(settings.get("torch_threads", 1)))  # the audio front end's fbank
        encoder, qformer = settings["networks"]
        self.embedder = OnnxEmbedder(
            front_end, os.path.join(version_dir, encoder, "model.onnx"), os.path.join(version_dir, qformer, "model.onnx"),
            intra_op_threads=int(settings.get("intra_op_threads", 0)), allow_spinning=bool(settings.get("allow_spinning", False)),
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        arrays, sizes, order = [], [], []
        for i, request in enumerate(requests):
            items = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().reshape(-1)
            try:
                arrays.append(np.stack([self.embedder.front_end(bytes(data)) for data in items]))
            except DECODE_ERRORS as exc:
                error = pb_utils.TritonError(f"{self.input}: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            sizes.append(len(items))
            order.append(i)
        if arrays:
            try:
                embeds = self.embedder.embed(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
            except Exception as exc:  # noqa: BLE001 - reported to every decoded request of the batch
                error = pb_utils.TritonError(f"{self.input}: inference failed: {exc}")
                for i in order:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                return responses
            offset = 0
            for i, size in zip(order, sizes):
                tensor = pb_utils.Tensor("EMBEDS", np.ascontiguousarray(embeds[offset : offset + size]))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
                offset += size
        return responses
