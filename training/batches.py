"""From drawn samples to model inputs: token layout, loss targets, media decoding, prefetching.

Sequence layout (the official `MMGPT4.forward`): BOS, the prompt with each modality's query embeddings
in place, then the answer tokens followed by `end_sym`; the loss targets are -100 everywhere except on
the answer tokens (and end_sym).

  stage 1: <s> [modality embeddings] caption\\n                         (no prompt; official end_sym "\\n")
  stage 2: <s> [system]###Human: <Vision>[image]</Vision> <Audio>[audio]</Audio> instruction###Assistant: answer###

Stage 2 builds the prompt with `bubogpt.prompt.build_prompt`, the function the served path uses, so
the template trained on is the template served. The answer is tokenized on its own (no BOS), as the
official code does.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bubogpt.config import BuboConfig
from bubogpt.prompt import PromptError, Turn, build_prompt, tokenize_segments
from training.datasets import DatasetFormatError, Media, Sample
from training.prompts import LLAVA_TEMPLATES, POOLS
from training.seeding import derive_seed
from training.stream import Item, Mixture

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def media_key(media: Media) -> str:
    """Cache key of a media item: the file path, or a digest of in-memory bytes."""
    if isinstance(media, (bytes, bytearray)):
        return "bytes:" + hashlib.blake2b(media, digest_size=16).hexdigest()
    return "path:" + str(media)


def decode_media(media: Media, modality: str, cfg: BuboConfig) -> torch.Tensor:
    """Image -> [3, S, S] pixels; audio -> [clips, 1, mel, frames] fbank (the served front ends)."""
    data = media if isinstance(media, (bytes, bytearray)) else Path(media).read_bytes()
    if modality == "image":
        from bubogpt.image import image_bytes_to_pixels

        return image_bytes_to_pixels(bytes(data), cfg.vision)
    from bubogpt.audio_features import audio_bytes_to_clips

    return audio_bytes_to_clips(bytes(data), cfg.audio)


@dataclass
class Encoded:
    token_ids: list[int]
    labels: list[int]
    slots: list[tuple[int, int, str]]  # (start, length, modality)


@dataclass
class Prepared:
    """One micro-batch: token layouts, the media they need, and the data position after it."""

    index: int
    source: str
    items: list[Item]
    encoded: list[Encoded]
    media: list[dict[str, tuple[str, Media]]]  # per sample: modality -> (cache key, media)
    decoded: dict[str, torch.Tensor] = field(default_factory=dict)  # cache key -> decoded tensor
    state: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


class Formatter:
    """Sample -> token ids, loss targets and modality slots, for one stage."""

    def __init__(
        self,
        tokenizer,
        cfg: BuboConfig,
        stage: str,
        seed: int,
        end_sym: str,
        max_answer_tokens: int,
        system_prompt: str = "",
        paired_order: Sequence[str] = ("image", "audio"),
        question_templates: dict[str, Sequence[str]] | None = None,
    ):
        self.tokenizer = tokenizer
        self.config = cfg
        self.stage = stage
        self.seed = seed
        self.end_sym = end_sym
        self.max_answer_tokens = max_answer_tokens
        self.system_prompt = system_prompt
        self.paired_order = tuple(paired_order)
        self.question_templates = question_templates or {}
        self.queries = {"image": cfg.vision_qformer.num_queries, "audio": cfg.audio_qformer.num_queries}
        self.fill_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.bos_id = tokenizer.bos_token_id
        self.max_len = cfg.llm.max_position_embeddings

    def ordered(self, sample: Sample) -> list[str]:
        return [m for m in self.paired_order if m in sample.modalities]

    def instruction(self, item: Item) -> str:
        """The user's text: the sample's own (LLaVA questions wrapped in a template) or one from the pool."""
        sample = item.sample
        rng = random.Random(derive_seed(self.seed, "instruction", item.source, item.draw))
        if sample.instruction is None:
            pool = POOLS.get(sample.modalities)
            if pool is None:
                raise DatasetFormatError(item.source, "a sample without image or audio has no instruction pool", record=f"sample {sample.key!r}")
            return rng.choice(tuple(pool))
        templates = self.question_templates.get(item.source)
        if templates:
            return rng.choice(tuple(templates)).format(question=sample.instruction)
        return sample.instruction

    def encode(self, item: Item) -> Encoded:
        sample = item.sample
        modalities = self.ordered(sample)
        if self.stage == "stage1":
            token_ids, slots = [self.bos_id], []
            for modality in modalities:
                slots.append((len(token_ids), self.queries[modality], modality))
                token_ids += [self.fill_id] * self.queries[modality]
        else:
            turns = list(sample.history) + [Turn("user", self.instruction(item))]
            try:
                prompt = build_prompt(turns, modalities, system=self.system_prompt)
            except PromptError as exc:
                raise DatasetFormatError(item.source, str(exc), record=f"sample {sample.key!r}") from None
            token_ids, slots = [], []
            for i, segment in enumerate(tokenize_segments(self.tokenizer, prompt)):
                if i > 0:
                    modality = modalities[i - 1]
                    slots.append((len(token_ids), self.queries[modality], modality))
                    token_ids += [self.fill_id] * self.queries[modality]
                token_ids += segment
        answer = list(self.tokenizer(sample.answer.strip() + self.end_sym, add_special_tokens=False)["input_ids"])
        answer = answer[: self.max_answer_tokens]  # official truncation (max_txt_len) of answer + end_sym
        labels = [IGNORE_INDEX] * len(token_ids) + answer
        token_ids = token_ids + answer
        if len(token_ids) > self.max_len:
            raise DatasetFormatError(item.source, f"{len(token_ids)} positions exceed the LLM context of {self.max_len}", record=f"sample {sample.key!r}")
        return Encoded(token_ids=token_ids, labels=labels, slots=slots)


def llava_templates(sources: Sequence[str]) -> dict[str, Sequence[str]]:
    return {name: LLAVA_TEMPLATES for name in sources}


class BatchLoader:
    """Endless iterator of `Prepared` micro-batches, optionally decoding ahead in worker threads.

    Planning (drawing samples, formatting) is sequential, so the order and the data position attached
    to each batch are the same with or without workers. `skip_decode(key)` tells which media need no
    decoding (their frozen features are cached). Samples that fail to format or decode are dropped
    with a warning when `skip_bad`, otherwise the error propagates.
    """

    def __init__(
        self,
        mixture: Mixture,
        formatter: Formatter,
        model_cfg: BuboConfig,
        skip_bad: bool = False,
        num_workers: int = 0,
        prefetch_batches: int = 2,
        skip_decode: Callable[[str], bool] | None = None,
    ):
        self.mixture = mixture
        self.formatter = formatter
        self.model_cfg = model_cfg
        self.skip_bad = skip_bad
        self.num_workers = num_workers
        self.prefetch_batches = prefetch_batches
        self.skip_decode = skip_decode or (lambda key: False)
        self._pool: ThreadPoolExecutor | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- planning (sequential) -------------------------------------------------------------------
    def _plan(self) -> Prepared:
        source, items = self.mixture.next_batch()
        index = self.mixture.batches - 1
        kept, encoded, media, dropped = [], [], [], []
        for item in items:
            try:
                enc = self.formatter.encode(item)
            except DatasetFormatError as exc:
                if not self.skip_bad:
                    raise
                log.warning("dropping sample (skip_bad): %s", exc)
                dropped.append(item.sample.key)
                continue
            refs = {}
            for modality in ("image", "audio"):
                ref = getattr(item.sample, modality)
                if ref is not None:
                    refs[modality] = (media_key(ref), ref)
            kept.append(item)
            encoded.append(enc)
            media.append(refs)
        return Prepared(index=index, source=source, items=kept, encoded=encoded, media=media,
                        state=self.mixture.state_dict(), dropped=dropped)

    def _jobs(self, batch: Prepared) -> dict[str, tuple[str, Media]]:
        jobs = {}
        for refs in batch.media:
            for modality, (key, ref) in refs.items():
                if key not in jobs and not self.skip_decode(key):
                    jobs[key] = (modality, ref)
        return jobs

    def _finish(self, batch: Prepared, results: dict[str, torch.Tensor | Exception]) -> Prepared:
        failed = {}
        for key, result in results.items():
            if isinstance(result, Exception):
                failed[key] = result
            else:
                batch.decoded[key] = result
        if failed:
            keep = []
            for i, refs in enumerate(batch.media):
                bad = [(m, failed[k]) for m, (k, _) in refs.items() if k in failed]
                if not bad:
                    keep.append(i)
                    continue
                modality, exc = bad[0]
                ref = refs[modality][1]
                what = f"cannot decode {ref}" if isinstance(ref, Path) else "cannot decode"
                error = DatasetFormatError(batch.items[i].source, f"{what}: {exc}", record=f"sample {batch.items[i].sample.key!r}", field=modality)
                if not self.skip_bad:
                    raise error from exc
                log.warning("dropping sample (skip_bad): %s", error)
                batch.dropped.append(batch.items[i].sample.key)
            batch.items = [batch.items[i] for i in keep]
            batch.encoded = [batch.encoded[i] for i in keep]
            batch.media = [batch.media[i] for i in keep]
        return batch

    def _decode(self, modality: str, ref: Media) -> torch.Tensor | Exception:
        try:
            return decode_media(ref, modality, self.model_cfg)
        except (ValueError, OSError) as exc:  # ImageDecodeError / AudioDecodeError are ValueErrors
            return exc

    # ---- iteration -------------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> Prepared:
        while True:
            if self.num_workers == 0:
                batch = self._plan()
                results = {key: self._decode(modality, ref) for key, (modality, ref) in self._jobs(batch).items()}
            else:
                if self._thread is None:
                    self._start()
                got = self._queue.get()
                if isinstance(got, BaseException):
                    raise got
                batch, futures = got
                results = {key: future.result() for key, future in futures.items()}
            batch = self._finish(batch, results)
            if batch.items:
                return batch
            log.warning("batch %d: every sample was dropped; drawing the next batch", batch.index)

    def _start(self) -> None:
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="bubo-decode")
        self._queue = queue.Queue(maxsize=self.prefetch_batches)
        self._thread = threading.Thread(target=self._produce, name="bubo-planner", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._plan()
                futures: dict[str, Future] = {
                    key: self._pool.submit(self._decode, modality, ref) for key, (modality, ref) in self._jobs(batch).items()
                }
                while not self._stop.is_set():
                    try:
                        self._queue.put((batch, futures), timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer
            self._queue.put(exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.1)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
