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

(then reinstall: `pip install -e . --no-deps`). Importing this module is cheap: the vLLM model and
processing classes live in `serving/vllm_model.py`, which only the processes that build the model
import (registration names it by "module:Class"), so the plugin hook and `mm_engine_prompt` do not
pull vLLM's model code into processes that don't need it.

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

    ModelRegistry.register_model(ARCH, f"serving.vllm_model:{ARCH}")


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
