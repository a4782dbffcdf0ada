"""The reference pipeline on plain PyTorch: image and/or audio + conversation -> greedy answer.

No batching, no cache, no server: the oracle that the served path (Triton + vLLM) is compared
with, token for token.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from bubogpt.audio_features import audio_bytes_to_clips
from bubogpt.decode import decode_tokens
from bubogpt.image import image_bytes_to_pixels
from bubogpt.llm import load_llm
from bubogpt.model import BuboGPT
from bubogpt.prompt import (STOP_STRING, PromptError, PromptLayout, Turn, build_prompt, layout_prompt, splice_embeddings,
                            truncate_at_stop)
from bubogpt.tokenizer import load_tokenizer
from bubogpt.weights import llm_dir, load_model

log = logging.getLogger(__name__)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (### or EOS) or "length"
    prompt_tokens: int
    timings: dict[str, float] = field(default_factory=dict)


class ReferencePipeline:
    def __init__(self, model: BuboGPT, llm, tokenizer):
        self.model = model.eval()
        self.llm = llm.eval()
        self.tokenizer = tokenizer
        self.config = model.config

    @classmethod
    def from_dir(cls, directory: str | Path | None = None) -> "ReferencePipeline":
        if directory is None:
            from bubogpt.defaults import default_model_dir

            directory = default_model_dir()
        model = load_model(directory)
        return cls(model, load_llm(llm_dir(directory)), load_tokenizer(llm_dir(directory)))

    @torch.inference_mode()
    def embed_image(self, data: bytes) -> torch.Tensor:
        pixels = image_bytes_to_pixels(data, self.config.vision)
        return self.model.embed_image(pixels[None])[0]

    @torch.inference_mode()
    def embed_audio(self, data: bytes) -> torch.Tensor:
        clips = audio_bytes_to_clips(data, self.config.audio)
        return self.model.embed_audio(clips[None])[0]

    def layout(self, turns: Sequence[Turn], modalities: Sequence[str]) -> PromptLayout:
        prompt = build_prompt(turns, modalities)
        return layout_prompt(self.tokenizer, prompt, self.config.vision_qformer.num_queries)

    @torch.inference_mode()
    def prompt_embeds(
        self,
        turns: Sequence[Turn],
        image_embeds: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[seq, hidden] input embeddings: the template's tokens with the modality rows spliced in."""
        modalities, rows = [], []
        if image_embeds is not None:
            modalities.append("image")
            rows.append(image_embeds)
        if audio_embeds is not None:
            modalities.append("audio")
            rows.append(audio_embeds)
        layout = self.layout(turns, modalities)
        return splice_embeddings(layout, rows, self.llm.get_input_embeddings())

    @torch.inference_mode()
    def generate_from_embeds(self, embeds: torch.Tensor, max_new_tokens: int = 64, min_new_tokens: int = 0) -> Generation:
        """Greedy decoding from prompt embeddings; stops at `###`, EOS or max_new_tokens. With
        `min_new_tokens`, neither EOS nor a `###` ending within the first that many tokens stops it (a
        `###` that begins in their last characters and ends after them does, as in vLLM)."""
        context = self.config.llm.max_position_embeddings
        if embeds.shape[0] >= context:
            raise PromptError(f"the prompt has {embeds.shape[0]} positions, the model's context is {context}")
        max_new_tokens = min(max_new_tokens, context - embeds.shape[0])
        eos = self.tokenizer.eos_token_id
        start = time.perf_counter()
        token_ids: list[int] = []
        finish_reason = "length"
        text = ""
        first_token_s = None
        searched_from = None  # where stop strings may begin, once past min_new_tokens
        for next_id in decode_tokens(self.llm, embeds, max_new_tokens, eos_token_id=eos, min_new_tokens=min_new_tokens):
            if first_token_s is None:
                first_token_s = time.perf_counter() - start
            token_ids.append(next_id)
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            if len(token_ids) <= min_new_tokens:
                continue
            if searched_from is None:
                early = self.tokenizer.decode(token_ids[:min_new_tokens], skip_special_tokens=True) if min_new_tokens else ""
                searched_from = max(0, len(early) - len(STOP_STRING) + 1)
            cut, stopped = truncate_at_stop(text[searched_from:])
            text = text[:searched_from] + cut
            if stopped or next_id == eos:
                finish_reason = "stop"
                break
        total = time.perf_counter() - start
        return Generation(
            text=text.strip(),
            token_ids=token_ids,
            finish_reason=finish_reason,
            prompt_tokens=int(embeds.shape[0]),
            timings={"first_token_s": first_token_s or 0.0, "generate_s": total},
        )

    def generate(
        self,
        turns: Sequence[Turn] | str,
        image: bytes | None = None,
        audio: bytes | None = None,
        max_new_tokens: int = 64,
    ) -> Generation:
        if isinstance(turns, str):
            turns = [Turn("user", turns)]
        start = time.perf_counter()
        image_embeds = self.embed_image(image) if image is not None else None
        audio_embeds = self.embed_audio(audio) if audio is not None else None
        encode_s = time.perf_counter() - start
        embeds = self.prompt_embeds(turns, image_embeds, audio_embeds)
        result = self.generate_from_embeds(embeds, max_new_tokens=max_new_tokens)
        result.timings["encode_s"] = encode_s
        return result
