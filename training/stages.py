"""What each stage trains, and the forward pass that computes the loss.

Stage 1 (modality-text alignment, captions, no prompt):
    trains vision_proj (image captions) and audio_qformer + audio_proj (audio captions);
    the vision Q-Former, both encoders and the LLM are frozen.
Stage 2 (multimodal instruction tuning: image, audio, image+audio and negative pairs):
    trains vision_proj and audio_proj (official stage-2 config: both Q-Formers frozen, projections not).

Frozen means requires_grad False and eval mode. The frozen front of each modality chain
(encoder, and the Q-Former when it is frozen) runs under no_grad; its outputs can be cached per media
item (`feature_cache_items`), which is exact because nothing there changes or is random. With the
cache on, the frozen front runs one sample at a time, so a cached feature is bit-identical to a
recomputed one (batched kernels may round differently for different batch compositions).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from bubogpt.model import BuboGPT
from training.batches import IGNORE_INDEX, Prepared, decode_media
from training.config import STAGE_TRAINABLE, TRAINABLE_COMPONENTS

STAGE_END_SYM = {"stage1": "\n", "stage2": "###"}
CHAINS = {
    "image": ("vision_encoder", "vision_qformer", "vision_proj"),
    "audio": ("audio_encoder", "audio_qformer", "audio_proj"),
}


def trainable_components(stage: str, override: list[str] | None = None) -> tuple[str, ...]:
    names = tuple(override) if override else STAGE_TRAINABLE[stage]
    for name in names:
        if name not in TRAINABLE_COMPONENTS:
            raise ValueError(f"{name!r} cannot be trained; choose from {list(TRAINABLE_COMPONENTS)}")
    return names


def freeze(model: BuboGPT, llm: nn.Module, trainable: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    """Everything frozen and in eval mode except the `trainable` components; returns their parameters."""
    model.requires_grad_(False).eval()
    llm.requires_grad_(False).eval()
    params = []
    for name in trainable:
        module = getattr(model, name)
        module.requires_grad_(True).train()
        params += [(f"{name}.{p}", t) for p, t in module.named_parameters()]
    return params


class FeatureCache:
    """LRU map of media key -> frozen-front output (on the training device)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return self.capacity > 0 and key in self._data

    def get(self, key: str) -> torch.Tensor | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class ModalityEmbedder:
    """Runs one modality's chain: the frozen front under no_grad (cached), the trained rest with grad."""

    def __init__(self, model: BuboGPT, modality: str, trainable: tuple[str, ...], cache_items: int):
        self.model = model
        self.modality = modality
        chain = CHAINS[modality]
        first_trained = next((i for i, name in enumerate(chain) if name in trainable), len(chain))
        self.front = [getattr(model, name) for name in chain[:first_trained]]
        self.rest = [getattr(model, name) for name in chain[first_trained:]]
        self.cache = FeatureCache(cache_items)

    def _front(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for module in self.front:
                x = module(x)
        return x

    def __call__(self, keys: list[str], inputs: Callable[[str], torch.Tensor], device: torch.device) -> torch.Tensor:
        """[n, queries, llm_hidden] for the media `keys`; `inputs(key)` gives the decoded tensor."""
        if self.cache.capacity > 0:
            feats = []
            for key in keys:
                feat = self.cache.get(key)
                if feat is None:
                    feat = self._front(inputs(key).to(device)[None])[0]
                    self.cache.put(key, feat)
                feats.append(feat)
            x = torch.stack(feats)
        else:
            x = self._front(torch.stack([inputs(key) for key in keys]).to(device))
        for module in self.rest:
            x = module(x)
        return x


class TrainStep(nn.Module):
    """model + frozen LLM; forward(batch) -> (mean loss over answer tokens, number of answer tokens)."""

    def __init__(self, model: BuboGPT, llm: nn.Module, trainable: tuple[str, ...], cache_items: int = 0):
        super().__init__()
        self.model = model
        self.llm = llm
        self.trainable = trainable
        self.embedders = {m: ModalityEmbedder(model, m, trainable, cache_items) for m in CHAINS}

    def cached(self, key: str) -> bool:
        return any(key in e.cache for e in self.embedders.values())

    def forward(self, batch: Prepared) -> tuple[torch.Tensor, int]:
        device = next(self.llm.parameters()).device
        embed_tokens = self.llm.get_input_embeddings()

        def inputs(key: str) -> torch.Tensor:
            tensor = batch.decoded.get(key)
            if tensor is None:  # evicted between planning and use: decode now
                modality, ref = next(refs[m] for refs in batch.media for m in refs if refs[m][0] == key)
                tensor = decode_media(ref, modality, self.model.config)
            return tensor

        # modality embeddings, one call per modality for the whole batch
        rows: dict[tuple[int, str], torch.Tensor] = {}
        for modality, embedder in self.embedders.items():
            owners = [i for i, refs in enumerate(batch.media) if modality in refs]
            if owners:
                out = embedder([batch.media[i][modality][0] for i in owners], inputs, device)
                for j, i in enumerate(owners):
                    rows[(i, modality)] = out[j]

        length = max(len(e.token_ids) for e in batch.encoded)
        size = len(batch.encoded)
        ids = torch.zeros(size, length, dtype=torch.long)
        labels = torch.full((size, length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(size, length, dtype=torch.long)
        for i, enc in enumerate(batch.encoded):  # right padding
            n = len(enc.token_ids)
            ids[i, :n] = torch.tensor(enc.token_ids)
            labels[i, :n] = torch.tensor(enc.labels)
            mask[i, :n] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        embeds = embed_tokens(ids)
        for i, enc in enumerate(batch.encoded):
            for start, count, modality in enc.slots:
                embeds[i, start : start + count] = rows[(i, modality)].to(embeds.dtype)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
        tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
        return out.loss, tokens


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on GPU; nothing (fp32) on CPU or when dtype is None."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
