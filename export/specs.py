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
    # 0 = no batch axis in Triton's sense (the detector sees one image of its own size at a time)
    max_batch_size: int = 8
    # for specs whose examples are not "random of batch N" (token ids, masks): seed -> inputs
    make_example: Callable[[int], dict[str, torch.Tensor]] | None = None
    # TensorRT optimization profile for non-batch dynamic axes: input -> (min, opt, max) shapes
    trt_profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None
    # how the parity check compares outputs (export.onnx_export.output_error): "elementwise", or
    # "matched_queries" for outputs [logits, boxes] whose queries are a top-k selection
    parity: str = "elementwise"

    def example(self, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        if self.make_example is not None:
            return self.make_example(seed)
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
    cfg = model.config
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


def grounding_specs(pipeline) -> list[ExportSpec]:
    """The grounding networks of a `bubogpt.grounding.pipeline.GroundingPipeline`."""
    from bubogpt.grounding.grounding_dino.preprocessing import caption_from_tags, tokenize

    tagger_size = pipeline.tagger.config.image_size
    scfg = pipeline.segmenter_encoder.config
    dcfg = pipeline.detector.config

    def detector_example(seed: int) -> dict[str, torch.Tensor]:
        # seed 0: the export example; other seeds: another image size and caption length
        generator = torch.Generator().manual_seed(seed)
        count = 3 + seed % 5
        order = torch.randperm(len(pipeline.tag_list), generator=generator)[:count].tolist()
        text = tokenize(caption_from_tags([pipeline.tag_list[i] for i in order]), pipeline.tokenizer, dcfg)
        height, width = (96 + 16 * seed, 128 + 24 * seed) if dcfg.hidden < 256 else (800, 1066 - 64 * seed)
        return {
            "PIXELS": torch.randn(1, 3, height, width, generator=generator),
            "INPUT_IDS": text.input_ids,
            "ATTENTION_MASK": text.attention_mask,
            "TOKEN_TYPE_IDS": text.token_type_ids,
            "TEXT_SELF_ATTENTION_MASKS": text.text_self_attention_masks,
            "POSITION_IDS": text.position_ids,
        }

    def decoder_example(seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        boxes = torch.rand(1, 2 + seed, 2, generator=generator) * scfg.img_size / 2
        return {
            "EMBEDDINGS": torch.randn(1, scfg.prompt_embed_dim, scfg.embed_size, scfg.embed_size, generator=generator),
            "BOXES": torch.cat([boxes, boxes + scfg.img_size / 4], dim=-1),
        }

    tokens = "tokens"
    return [
        ExportSpec(
            name="tagger",
            module=pipeline.tagger,
            inputs={"PIXELS": lambda b: torch.randn(b, 3, tagger_size, tagger_size)},
            outputs=["PROBS"],
        ),
        ExportSpec(
            name="detector",
            module=pipeline.detector,
            inputs={name: (lambda b: None) for name in detector_example(0)},
            outputs=["PRED_LOGITS", "PRED_BOXES"],
            extra_dynamic_axes={
                "PIXELS": {2: "height", 3: "width"}, "INPUT_IDS": {1: tokens}, "ATTENTION_MASK": {1: tokens},
                "TOKEN_TYPE_IDS": {1: tokens}, "TEXT_SELF_ATTENTION_MASKS": {1: tokens, 2: tokens}, "POSITION_IDS": {1: tokens},
            },
            max_batch_size=0,
            make_example=detector_example,
            # its 900 queries are the top-k of ~20k encoder proposals; near-ties flip a few between any
            # two runs (full size, random weights: torch at 1 vs 2 threads differs as much as ONNX Runtime)
            parity="matched_queries",
            trt_profile={
                "PIXELS": ((1, 3, 512, 512), (1, 3, 800, 1066), (1, 3, 1333, 1333)),
                **{name: ((1, 1), (1, 32), (1, dcfg.max_text_len)) for name in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS", "POSITION_IDS")},
                "TEXT_SELF_ATTENTION_MASKS": ((1, 1, 1), (1, 32, 32), (1, dcfg.max_text_len, dcfg.max_text_len)),
            },
        ),
        ExportSpec(
            name="sam_image_encoder",
            module=pipeline.segmenter_encoder,
            inputs={"PIXELS": lambda b: torch.randn(b, 3, scfg.img_size, scfg.img_size)},
            outputs=["EMBEDDINGS"],
            max_batch_size=4,
        ),
        ExportSpec(
            name="sam_prompt_decoder",
            module=pipeline.segmenter_decoder,
            inputs={name: (lambda b: None) for name in decoder_example(0)},
            outputs=["LOW_RES_MASKS", "IOU"],
            extra_dynamic_axes={"BOXES": {1: "boxes"}, "LOW_RES_MASKS": {1: "boxes"}, "IOU": {1: "boxes"}},
            max_batch_size=0,
            make_example=decoder_example,
            trt_profile={
                "EMBEDDINGS": ((1, scfg.prompt_embed_dim, scfg.embed_size, scfg.embed_size),) * 3,
                "BOXES": ((1, 1, 4), (1, 8, 4), (1, 64, 4)),
            },
        ),
    ]
