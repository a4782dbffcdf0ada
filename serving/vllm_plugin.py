"""The third injection route ("mm"): BuboGPT's LLM as an out-of-tree vLLM multimodal model.

The prompt stays token ids (the layout's ids, each modality slot = `num_query_tokens` copies of
one placeholder id) and the precomputed, already projected modality embeddings travel as
multimodal items (`multi_modal_data={"image": [Tensor[32, hidden], ...]}`). The model is vLLM's own
`LlamaForCausalLM` plus `SupportsMultiModal`: `embed_multimodal` hands the given rows back
unchanged, `embed_input_ids` writes them over the placeholder positions. No HF image processor
ever runs (the processor refuses anything but embeddings).

Use it:

    from vllm.engine.arg_utils import AsyncEngineArgs
    from serving.vllm_plugin import mm_engine_kwargs, mm_engine_prompt, register

    register()  # this process; the EngineCore subprocess needs the entry point (see below)
    args = AsyncEngineArgs(model=llm_dir, tokenizer=llm_dir, ..., **mm_engine_kwargs())
    engine = AsyncLLM.from_engine_args(args)
    engine.generate(mm_engine_prompt(layout, [image_rows, audio_rows]), params, request_id)

`hf_overrides={"architectures": ["BuboLlamaForCausalLM"], ...}` makes vLLM build this class from
the unchanged HF Llama directory (same weights, same names).

Registration. `register()` is the `vllm.general_plugins` entry point. vLLM calls every general
plugin in each of its processes (frontend, EngineCore, workers, and the registry's inspection
subprocess). On CPU, vLLM forces the `spawn` start method, so the EngineCore that AsyncLLM always
starts is a fresh interpreter: an in-process `register()` call does not reach it, only the entry
point does. `VLLM_PLUGINS` is only an allow-list of entry-point names; it cannot add a plugin.
pyproject.toml needs:

    [project.entry-points."vllm.general_plugins"]
    bubogpt = "serving.vllm_plugin:register"

(then reinstall: `pip install -e . --no-deps`). Importing this module is cheap: the vLLM model
and processing classes are built on first attribute access (PEP 562 `__getattr__`), so the plugin
hook and `mm_engine_prompt` do not pull vLLM's model code into processes that don't need it.

Modality name. vLLM 0.32 parses precomputed embeddings for "image", "audio" and "video" alike
(`ImageEmbeddingItems` / `AudioEmbeddingItems`), so "audio" would be accepted. The route still
sends every BuboGPT modality as "image" items, in prompt (slot) order: all slots share one
placeholder id, and with one modality name vLLM binds item i to the i-th placeholder run in the
prompt, whatever the caller's modality order. (With two modality names sharing a placeholder the
binding would follow the key order of `multi_modal_data` instead.)

Placeholder id. Each slot is `num_query_tokens` copies of `placeholder_id` (default 0, the layout's
fill id = pad/<unk> for Llama/Vicuna tokenizers). vLLM must see it in vocabulary (it rejects prompt
ids >= vocab size), and vLLM's prompt-update step finds each item by matching the exact run
`[placeholder_id] * num_query_tokens` from left to right; `mm_engine_prompt` simulates that match and
refuses a prompt whose text would shift it (e.g. a text <unk> right before a slot).
"""

from __future__ import annotations

from typing import Sequence

import torch

from bubogpt.prompt import PromptLayout

ARCH = "BuboLlamaForCausalLM"
MM_MODALITY = "image"  # every BuboGPT modality (image, audio) is sent under this name
DEFAULT_PLACEHOLDER_ID = 0
DEFAULT_NUM_QUERY_TOKENS = 32
# hf_overrides keys read back by the processor (they become attributes of the HF config)
CFG_NUM_QUERY_TOKENS = "bubo_num_query_tokens"
CFG_PLACEHOLDER_ID = "bubo_placeholder_id"

_LAZY_NAMES = (
    "BuboLlamaForCausalLM",
    "BuboProcessingInfo",
    "BuboDummyInputsBuilder",
    "BuboMultiModalProcessor",
    "BuboEmbeddingsParser",
)


# ---------------------------------------------------------------------------------------------
# Engine-side helpers (no vLLM import)
# ---------------------------------------------------------------------------------------------


def register() -> None:
    """The `vllm.general_plugins` hook: make `BuboLlamaForCausalLM` known to vLLM's registry.

    Safe to call many times (vLLM calls plugins once per process; explicit calls just overwrite).
    Registered lazily by "module:Class", as vLLM recommends for plugins: the class is imported
    when a model with this architecture is actually built or inspected.
    """
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCH, f"{__name__}:{ARCH}")


def mm_engine_kwargs(
    num_query_tokens: int = DEFAULT_NUM_QUERY_TOKENS,
    placeholder_id: int = DEFAULT_PLACEHOLDER_ID,
) -> dict:
    """The extra `AsyncEngineArgs` fields for this route (merge into the usual ones)."""
    return {
        "hf_overrides": {
            "architectures": [ARCH],
            CFG_NUM_QUERY_TOKENS: int(num_query_tokens),
            CFG_PLACEHOLDER_ID: int(placeholder_id),
        },
        "enable_mm_embeds": True,
        # 0 = "embedding-only" modality: no encoder tower to build or profile, and the per-prompt
        # count check is skipped for embeddings (the prompt builder already allows one image and
        # one audio at most).
        "limit_mm_per_prompt": {MM_MODALITY: 0},
    }


def _first_run_starts(token_ids: Sequence[int], run: list[int], count: int) -> list[int]:
    """Start of each non-overlapping occurrence of `run`, left to right, like vLLM's matcher."""
    starts: list[int] = []
    i, n, last = 0, len(run), len(token_ids) - len(run)
    while i <= last and len(starts) < count:
        if token_ids[i] == run[0] and list(token_ids[i : i + n]) == run:
            starts.append(i)
            i += n
        else:
            i += 1
    return starts


def mm_engine_prompt(
    layout: PromptLayout,
    modality_embeds: Sequence[torch.Tensor],
    placeholder_id: int = DEFAULT_PLACEHOLDER_ID,
    uuids: Sequence[str] | None = None,
) -> dict:
    """The prompt dict for `AsyncLLM.generate`: token ids + the slots' embeddings as mm items.

    `modality_embeds` are in slot (prompt) order, each `[slot_length, hidden]`. `placeholder_id`
    must be the one the engine was configured with (`mm_engine_kwargs`). `uuids` (optional, one
    per item) replace vLLM's content hash of each tensor as its cache identity; only pass ids that
    are unique per content (e.g. the upstream embedding cache's content hash).
    """
    if len(modality_embeds) != len(layout.slots):
        raise ValueError(
            f"the prompt has {len(layout.slots)} modality slots but {len(modality_embeds)} embeddings were given"
        )
    token_ids = list(layout.token_ids)
    items: list[torch.Tensor] = []
    for (start, length), rows in zip(layout.slots, modality_embeds):
        if not isinstance(rows, torch.Tensor) or rows.ndim != 2 or rows.shape[0] != length:
            shape = list(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise ValueError(f"modality embeddings must be [{length}, hidden], got {shape}")
        token_ids[start : start + length] = [placeholder_id] * length
        # a copy: a slice of a bigger tensor (e.g. rows of the spliced prompt) would drag its
        # whole storage into vLLM's processor cache and IPC
        items.append(rows.detach().to("cpu", copy=True).contiguous())
    if not items:
        return {"prompt_token_ids": token_ids}
    lengths = {length for _, length in layout.slots}
    if len(lengths) != 1:
        raise ValueError(f"all modality slots must have the same length, got {sorted(lengths)}")
    run = [placeholder_id] * lengths.pop()
    starts = _first_run_starts(token_ids, run, len(items))
    if starts != [start for start, _ in layout.slots]:
        raise ValueError(
            f"placeholder id {placeholder_id} also occurs in the text next to or before a modality slot; "
            "vLLM would place the embeddings at the wrong positions (choose another placeholder id)"
        )
    prompt = {"prompt_token_ids": token_ids, "multi_modal_data": {MM_MODALITY: items}}
    if uuids is not None:
        if len(uuids) != len(items):
            raise ValueError(f"{len(items)} embeddings but {len(uuids)} uuids")
        prompt["multi_modal_uuids"] = {MM_MODALITY: list(uuids)}
    return prompt


# ---------------------------------------------------------------------------------------------
# vLLM classes, built on first access
# ---------------------------------------------------------------------------------------------


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        _build_vllm_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_vllm_classes() -> None:
    if "BuboLlamaForCausalLM" in globals():
        return

    from collections.abc import Mapping

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

    for cls in (
        BuboEmbeddingsParser,
        BuboProcessingInfo,
        BuboDummyInputsBuilder,
        BuboMultiModalProcessor,
        BuboLlamaForCausalLM,
    ):
        cls.__qualname__ = cls.__name__  # importable (and picklable) as serving.vllm_plugin.<name>
        globals()[cls.__name__] = cls
