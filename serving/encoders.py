"""Image and audio embeddings from the Triton ensembles, cached by content hash.

Later turns of a chat about the same image skip the encoders; concurrent requests for the same bytes
share one Triton call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

ENSEMBLES = {"image": ("image_embed", "IMAGE"), "audio": ("audio_embed", "AUDIO")}


class InputError(ValueError):
    """The payload itself is bad (not decodable, too large...); the message names the field."""


class EncoderUnavailable(RuntimeError):
    """Triton failed for a reason that is not the client's fault."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class EmbeddingCache:
    """Bounded LRU of [32, hidden] embeddings keyed by sha256(modality, bytes)."""

    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.stats = CacheStats()

    @staticmethod
    def key(modality: str, data: bytes) -> str:
        return hashlib.sha256(modality.encode() + b"\0" + data).hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
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


class TritonEncoders:
    """Embeddings through the ensembles. When the repository is polled for new weights, the loaded
    model versions are checked every `version_check_s` seconds and the cache is emptied when they
    change, so no embedding of the old weights is served after that window."""

    def __init__(self, url: str, cache_entries: int = 512, timeout_s: float = 120.0, version_check_s: float | None = None):
        import tritonclient.grpc.aio as grpcclient

        self._grpcclient = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.cache = EmbeddingCache(cache_entries)
        self.timeout_s = timeout_s
        self._inflight: dict[str, asyncio.Future] = {}
        self.version_check_s = version_check_s
        self._versions: tuple | None = None
        self._checked_at = float("-inf")

    async def loaded_versions(self) -> tuple:
        index = await self.client.get_model_repository_index(as_json=True)
        return tuple(sorted((m["name"], m.get("version", "")) for m in index.get("models", []) if m.get("state") == "READY"))

    async def _check_versions(self) -> None:
        import time

        now = time.monotonic()
        if self.version_check_s is None or now - self._checked_at < self.version_check_s:
            return
        self._checked_at = now
        versions = await self.loaded_versions()
        if self._versions is not None and versions != self._versions:
            log.info("model versions changed: emptying the embedding cache (%d entries)", len(self.cache))
            self.cache.clear()
        self._versions = versions

    async def close(self) -> None:
        await self.client.close()

    async def embed(self, modality: str, data: bytes) -> tuple[torch.Tensor, bool]:
        """Returns ([num_queries, hidden] embeddings, cache_hit)."""
        await self._check_versions()
        key = EmbeddingCache.key(modality, data)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), True
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await self._infer(modality, data)
            self.cache.put(key, value)
            future.set_result(value)
            return value, False
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: a failure nobody else awaited is not an error
            raise
        finally:
            self._inflight.pop(key, None)

    async def _infer(self, modality: str, data: bytes) -> torch.Tensor:
        from tritonclient.utils import InferenceServerException

        model, input_name = ENSEMBLES[modality]
        tensor = self._grpcclient.InferInput(input_name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        try:
            result = await self.client.infer(model, [tensor], client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            marker = f"{input_name}: "
            if marker in message:  # our preprocessing models prefix bad-input errors with the input name
                raise InputError(f"{modality}: {message.split(marker, 1)[1]}") from None
            raise EncoderUnavailable(f"{model} failed: {message}") from None
        return torch.from_numpy(result.as_numpy("EMBEDS")[0].copy())
