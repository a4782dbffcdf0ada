"""What gets exported: one `ExportSpec` per Triton model, with example inputs and dynamic axes.

Every network is exported with a dynamic batch axis (the Triton dynamic batcher stacks requests
along it). The Q-Formers are exported together with their projection: the pair is one Triton model
whose output is the [32, llm_hidden] rows the LLM takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from bubogpt.model import BuboGPT


@dataclass
class ExportSpec:
    name: str
    module: nn.Module
    # name -> function(batch) making a random example of that input
    inputs: dict[str, Callable[[int], torch.Tensor]]
    outputs: list[str]
    # extra dynamic axes beyond the batch axis 0: input/output name -> {axis: label}
    extra_dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    max_batch_size: int = 8

    def example(self, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return {name: make(batch) for name, make in self.inputs.items()}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {name: {0: "batch"} for name in list(self.inputs) + self.outputs}
        for name, extra in self.extra_dynamic_axes.items():
            axes[name] = {**axes.get(name, {}), **extra}
        return axes


class QFormerWithProjection(nn.Module):
    """encoder features -> Q-Former -> linear projection to the LLM width."""

    def __init__(self, qformer: nn.Module, proj: nn.Linear):
        super().__init__()
        self.qformer = qformer
        self.proj = proj

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.qformer(features))


def modality_specs(model: BuboGPT) -> list[ExportSpec]:
    cfg = model.cfg
    v, a = cfg.vision, cfg.audio
    return [
        ExportSpec(
            name="vision_encoder",
            module=model.vision_encoder,
            inputs={"PIXELS": lambda b: torch.randn(b, 3, v.image_size, v.image_size)},
            outputs=["FEATURES"],
        ),
        ExportSpec(
            name="vision_qformer",
            module=QFormerWithProjection(model.vision_qformer, model.vision_proj),
            inputs={"FEATURES": lambda b: torch.randn(b, v.num_tokens, v.width)},
            outputs=["EMBEDS"],
        ),
        ExportSpec(
            name="audio_encoder",
            module=model.audio_encoder,
            inputs={"CLIPS": lambda b: torch.randn(b, a.num_clips, 1, a.num_mel_bins, a.target_frames)},
            outputs=["FEATURES"],
        ),
        ExportSpec(
            name="audio_qformer",
            module=QFormerWithProjection(model.audio_qformer, model.audio_proj),
            # the encoder's tokens are unit vectors scaled by 20
            inputs={"FEATURES": lambda b: torch.nn.functional.normalize(torch.randn(b, a.num_tokens, a.width), dim=-1) * 20},
            outputs=["EMBEDS"],
        ),
    ]
