"""Image or audio bytes -> the LLM's input rows, with the exported ONNX graphs in ONNX Runtime.

What a CPU model repository's fused `image_embed` / `audio_embed` models run
(model_repository/fused_embed): the modality's front end, its encoder and its Q-Former (with the
projection) back to back in one process, in sessions built by `bubogpt.onnx_session`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bubogpt.audio_features import AudioDecodeError, audio_bytes_to_clips
from bubogpt.config import AudioEncoderConfig, VisionEncoderConfig, part_from_dict
from bubogpt.image import ImageDecodeError, decode_image, preprocess_to_array
from bubogpt.onnx_session import ort_session

# what a request whose bytes cannot be decoded raises, per modality
DECODE_ERRORS = (ImageDecodeError, AudioDecodeError)


@dataclass
class FrontEnd:
    """Bytes -> one encoder input: [3, size, size] pixels or [clips, 1, mels, frames] fbank clips."""

    modality: str  # "image" or "audio"
    vision: VisionEncoderConfig | None = None
    audio: AudioEncoderConfig | None = None
    max_pixels: int = 40_000_000
    max_seconds: float = 600.0

    @classmethod
    def from_settings(cls, modality: str, settings: dict) -> "FrontEnd":
        """From a served model's bubo.json (the fused model's, or a preprocess model's)."""
        if modality == "image":
            return cls("image", vision=part_from_dict(VisionEncoderConfig, settings["vision"]), max_pixels=int(settings["max_pixels"]))
        return cls("audio", audio=part_from_dict(AudioEncoderConfig, settings["audio"]), max_seconds=float(settings["max_seconds"]))

    def __call__(self, data: bytes) -> np.ndarray:
        if self.modality == "image":
            return preprocess_to_array(decode_image(data, self.max_pixels), self.vision)
        return audio_bytes_to_clips(data, self.audio, max_seconds=self.max_seconds).numpy().astype(np.float32)


class OnnxEmbedder:
    """Front end -> encoder graph -> Q-Former graph. `embed` runs a batch of front-end outputs."""

    def __init__(self, front_end: FrontEnd, encoder: str | Path, qformer: str | Path, **session_settings):
        self.front_end = front_end
        self.encoder = ort_session(encoder, **session_settings)
        self.qformer = ort_session(qformer, **session_settings)
        self._encoder_input = self.encoder.get_inputs()[0].name
        self._qformer_input = self.qformer.get_inputs()[0].name

    def encode(self, batch: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {self._encoder_input: batch})[0]

    def project(self, features: np.ndarray) -> np.ndarray:
        return self.qformer.run(None, {self._qformer_input: features})[0]

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """[B, ...] front-end outputs -> [B, queries, llm_hidden]."""
        return self.project(self.encode(batch))
