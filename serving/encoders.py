"""Image and audio embeddings from the Triton ensembles, cached by content hash.

Later turns of a chat about the same image skip the encoders; concurrent requests for the same bytes
share one Triton call, and a call whose requests were all cancelled still lands in the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from serving.triton_client import TritonClient

log = logging.getLogger(__name__)

ENSEMBLES = {"image": ("image_embed", "IMAGE"), "audio": ("audio_embed", "AUDIO")}


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class ContentCache:
    """Bounded LRU keyed by sha256(kind, bytes): embeddings ([32, hidden] tensors), grounding results."""

    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._items: OrderedDict[str, object] = OrderedDict()
        self.stats = CacheStats()

    @staticmethod
    def key(kind: str, data: bytes) -> str:
        return hashlib.sha256(kind.encode() + b"\0" + data).hexdigest()

    def get(self, key: str):
        value = self._items.get(key)
        if value is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: str, value) -> None:
        if self.max_entries <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class CachedCalls:
    """Triton calls keyed by content: a cached result is served at once, a call in flight for the same
    bytes is shared, and a finished call lands in the cache even when everyone who asked for it left."""

    def __init__(self, triton: TritonClient, cache: ContentCache):
        self.triton = triton
        self.cache = cache
        self._inflight: dict[str, asyncio.Task] = {}

    async def get(self, key: str, submit, what: str):
        """(result, cache_hit); `submit()` starts the Triton call when there is nothing to share."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True
        task = self._inflight.get(key)
        shared = task is not None
        if task is None:
            task = submit()
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._landed(key, t))
        return await self.triton.part.guard(task, self.triton.wait_s, what), shared

    def _landed(self, key: str, task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is None:
            self.cache.put(key, task.result())


class TritonEncoders:
    """Embeddings through the ensembles. When the repository is polled for new weights, the loaded
    model versions are checked every `version_check_s` seconds and the cache is emptied when they
    change, so no embedding of the old weights is served after that window."""

    def __init__(self, triton: TritonClient, cache_entries: int = 512, version_check_s: float | None = None):
        self.triton = triton
        self.cache = ContentCache(cache_entries)
        self._calls = CachedCalls(triton, self.cache)
        self.version_check_s = version_check_s
        self._versions: tuple | None = None
        self._checked_at = float("-inf")

    async def loaded_versions(self) -> tuple:
        index = await self.triton.client.get_model_repository_index(as_json=True, client_timeout=5.0)
        return tuple(sorted((m["name"], m.get("version", "")) for m in index.get("models", []) if m.get("state") == "READY"))

    async def _check_versions(self) -> None:
        import time

        now = time.monotonic()
        if self.version_check_s is None or now - self._checked_at < self.version_check_s:
            return
        self._checked_at = now
        try:
            versions = await self.loaded_versions()
        except Exception as exc:  # noqa: BLE001 - Triton busy or restarting: check again next window
            log.warning("could not read Triton's model versions: %s", exc)
            return
        if self._versions is not None and versions != self._versions:
            log.info("model versions changed: emptying the embedding cache (%d entries)", len(self.cache))
            self.cache.clear()
        self._versions = versions

    async def embed(self, modality: str, data: bytes) -> tuple[torch.Tensor, bool]:
        """Returns ([num_queries, hidden] embeddings, cache_hit)."""
        self.triton.part.require()
        await self._check_versions()
        model, input_name = ENSEMBLES[modality]

        def submit():
            tensor = self.triton.grpcclient.InferInput(input_name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            return self.triton.submit(model, [tensor], _embeds, {input_name: modality})

        return await self._calls.get(ContentCache.key(modality, data), submit, f"the {modality} embedding")


def _embeds(result) -> torch.Tensor:
    return torch.from_numpy(result.as_numpy("EMBEDS")[0].copy())
