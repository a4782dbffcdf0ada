"""BuboGPT's modality side: encoders, Q-Formers and projections to the LLM width.

    image pixels -> vision_encoder (EVA-ViT-g + ln_vision) -> vision_qformer -> vision_proj -> [32, llm]
    fbank clips  -> audio_encoder (ImageBind audio)        -> audio_qformer  -> audio_proj  -> [32, llm]

The LLM itself lives in `bubogpt.llm` (a Hugging Face LLaMA directory), because serving runs it in
vLLM while these networks are exported to Triton.
"""

from __future__ import annotations

import torch
from torch import nn

from bubogpt.audio_encoder import ImageBindAudioEncoder
from bubogpt.config import BuboConfig
from bubogpt.qformer import QFormer
from bubogpt.vision_encoder import EvaViT

# The component names used in files, `bubo info` and the Triton model repository.
MODALITY_COMPONENTS = ("vision_encoder", "vision_qformer", "vision_proj", "audio_encoder", "audio_qformer", "audio_proj")
COMPONENTS = MODALITY_COMPONENTS + ("llm",)


class BuboGPT(nn.Module):
    def __init__(self, cfg: BuboConfig):
        super().__init__()
        self.config = cfg
        self.vision_encoder = EvaViT(cfg.vision)
        self.vision_qformer = QFormer(cfg.vision_qformer)
        self.vision_proj = nn.Linear(cfg.vision_qformer.hidden, cfg.llm.hidden)
        self.audio_encoder = ImageBindAudioEncoder(cfg.audio)
        self.audio_qformer = QFormer(cfg.audio_qformer)
        self.audio_proj = nn.Linear(cfg.audio_qformer.hidden, cfg.llm.hidden)

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, num_queries, llm_hidden]."""
        return self.vision_proj(self.vision_qformer(self.vision_encoder(pixels)))

    def embed_audio(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, clips, 1, mel, frames] normalised fbank -> [B, num_queries, llm_hidden]."""
        return self.audio_proj(self.audio_qformer(self.audio_encoder(clips)))
