"""BuboGPT's LLM as an out-of-tree vLLM multimodal model: vLLM's Llama plus precomputed modality
embeddings written over placeholder tokens (the "mm" injection route; see serving/vllm_plugin.py
for the route, the prompt format and how the class is registered).

Imported only where vLLM builds or inspects the model (its engine core and workers): registration
names this module by "module:Class", so the frontend's own process never loads vLLM's model code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import _merge_multimodal_embeddings
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
)
from vllm.multimodal.processing.inputs import ProcessorInputs

from serving.vllm_plugin import (
    ARCH,
    CFG_NUM_QUERY_TOKENS,
    CFG_PLACEHOLDER_ID,
    DEFAULT_NUM_QUERY_TOKENS,
    DEFAULT_PLACEHOLDER_ID,
    MM_MODALITY,
)


class BuboEmbeddingsParser(MultiModalDataParser):
    """Accepts precomputed embeddings only, and only under MM_MODALITY."""

    def _parse_image_data(self, data):
        if data is None:
            return None
        if not self.is_embeddings(data):
            raise ValueError(
                f"{ARCH} takes precomputed embeddings only: pass a list of 2-D tensors "
                f"[num_query_tokens, hidden] (or one 3-D tensor) under {MM_MODALITY!r}"
            )
        return super()._parse_image_data(data)

    def _get_subparsers(self):
        return {MM_MODALITY: self._parse_image_data}


class BuboProcessingInfo(BaseProcessingInfo):
    @property
    def num_query_tokens(self) -> int:
        return int(getattr(self.get_hf_config(), CFG_NUM_QUERY_TOKENS, DEFAULT_NUM_QUERY_TOKENS))

    @property
    def placeholder_id(self) -> int:
        return int(getattr(self.get_hf_config(), CFG_PLACEHOLDER_ID, DEFAULT_PLACEHOLDER_ID))

    @property
    def hidden_size(self) -> int:
        return int(self.ctx.model_config.get_inputs_embeds_size())

    def get_hf_processor(self, **kwargs: object):
        raise RuntimeError(f"{ARCH} has no HF processor: it takes precomputed embeddings only")

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set()}

    def get_data_parser(self) -> MultiModalDataParser:
        return BuboEmbeddingsParser(
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MM_MODALITY: None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {MM_MODALITY: self.num_query_tokens}


class BuboDummyInputsBuilder(BaseDummyInputsBuilder[BuboProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # the processor builds the dummy prompt from token ids (get_dummy_inputs)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        count = mm_counts.get(MM_MODALITY, 0)
        if not count:
            return {}
        rows = torch.zeros(self.info.num_query_tokens, self.info.hidden_size)
        return {MM_MODALITY: [rows] * count}


class BuboMultiModalProcessor(BaseMultiModalProcessor[BuboProcessingInfo]):
    """Embeddings pass straight through; each item keeps its placeholder run unchanged."""

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options) -> ProcessorInputs:
        data = self.dummy_inputs.get_dummy_mm_data(seq_len, mm_counts, mm_options)
        count = mm_counts.get(MM_MODALITY, 0)
        prompt = [self.info.placeholder_id] * (self.info.num_query_tokens * count)
        return ProcessorInputs(prompt=prompt, mm_data_items=self.info.parse_mm_data(data, validate=False))

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        return {f"{MM_MODALITY}_embeds": MultiModalFieldConfig.batched(MM_MODALITY)}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        num_tokens = self.info.num_query_tokens
        run = [self.info.placeholder_id] * num_tokens

        def replacement(item_idx: int) -> list[int]:
            items = mm_items.get_items(MM_MODALITY, ImageEmbeddingItems)
            size = items.get_feature_size(item_idx)
            if size != num_tokens:
                raise ValueError(f"{MM_MODALITY} embedding [{item_idx}] has {size} rows, expected {num_tokens}")
            return run

        # identity replacement: the prompt already holds the run; this only locates it
        return [PromptReplacement(modality=MM_MODALITY, target=run, replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(
    BuboMultiModalProcessor, info=BuboProcessingInfo, dummy_inputs=BuboDummyInputsBuilder
)


class BuboLlamaForCausalLM(LlamaForCausalLM, SupportsMultiModal):
    """vLLM's Llama, plus precomputed multimodal embeddings written over placeholder tokens."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return None  # no chat-template placeholder: prompts arrive as token ids

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        placeholder = int(getattr(config, CFG_PLACEHOLDER_ID, DEFAULT_PLACEHOLDER_ID))
        self.configure_mm_token_handling(vocab_size=config.vocab_size, mm_token_ids=[placeholder])

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        embeds = kwargs.get(f"{MM_MODALITY}_embeds")
        if embeds is None:
            return []
        dtype = self.model.embed_tokens.weight.dtype
        if isinstance(embeds, torch.Tensor):
            return [rows.to(dtype) for rows in (embeds if embeds.ndim == 3 else embeds[None])]
        return [rows.to(dtype) for rows in embeds]

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs_embeds = self._embed_text_input_ids(
            input_ids, self.model.embed_input_ids, is_multimodal=is_multimodal
        )
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return inputs_embeds
        if is_multimodal is None:
            raise ValueError("embed_input_ids needs is_multimodal with multimodal embeddings")
        return _merge_multimodal_embeddings(inputs_embeds, multimodal_embeddings, is_multimodal)
