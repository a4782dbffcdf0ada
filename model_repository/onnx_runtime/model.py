"""Triton python-backend model running one ONNX file in ONNX Runtime.

The dynamic batcher hands `execute` several requests at once; they are concatenated along the
batch axis, run as one batch, and split back, so batching pays off as it would in a native backend.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from bubogpt.onnx_session import ort_session


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "bubo.json")) as handle:
            settings = json.load(handle)
        # bubo.json's defaults (export/repository.py says why): a pool of one thread per core that does not spin
        self.session = ort_session(
            os.path.join(version_dir, "model.onnx"), intra_op_threads=int(settings.get("intra_op_threads", 0)),
            allow_spinning=bool(settings.get("allow_spinning", False)), gpu=args.get("model_instance_kind") == "GPU",
        )
        self.inputs = [item["name"] for item in config["input"]]
        self.outputs = [item["name"] for item in config["output"]]
        # without a batch axis (max_batch_size 0) requests differ in shape: run them one by one
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        if not self.batched and len(requests) > 1:
            return [self.execute([request])[0] for request in requests]
        parts = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs}
        sizes = [array.shape[0] for array in parts[self.inputs[0]]]
        feed = {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in parts.items()}
        try:
            results = self.session.run(self.outputs, feed)
        except Exception as exc:  # noqa: BLE001 - reported to every request of the batch
            error = pb_utils.TritonError(f"{self.inputs[0]}: inference failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, offset = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[offset : offset + size])) for name, result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            offset += size
        return responses
