"""The LLM engine behind the frontend: a conversation + modality embeddings in, streamed text out.

Two engines share one interface:

* `VLLMEngine` (the default): vLLM's AsyncLLM, continuous batching, prefix caching. The modality
  embeddings reach it as precomputed multimodal items of an out-of-tree model (the prompt stays
  token ids with a placeholder run per modality); `prompt_embeds` routes remain selectable (see
  `INJECTION_ROUTE` below for the measurements behind the choice).
* `TorchEngine`: plain PyTorch (transformers), one request at a time; the benchmark baseline and
  the oracle's twin. Selected explicitly (`--llm-engine torch`).

Everything is validated before it reaches vLLM: vLLM does not check prompt_embeds, and one tensor
of the wrong width kills its engine for every later request. If the engine dies anyway, the
requests in flight get PartUnavailable("llm") and a new engine is started, off the event loop (a
thread), so the frontend keeps answering meanwhile: by the engine itself (`restart_on_failure`,
standalone use) or by `serving.supervisor` (`bubo serve`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Sequence

import torch
from safetensors import safe_open

from bubogpt.decode import decode_tokens
from bubogpt.llm import llm_config_from_hf
from bubogpt.prompt import (
    STOP_STRING,
    PromptError,
    PromptLayout,
    Turn,
    build_prompt,
    layout_prompt,
    splice_embeddings,
    truncate_at_stop,
)
from bubogpt.tokenizer import load_tokenizer
from serving.errors import InvalidArgument, PartUnavailable

log = logging.getLogger(__name__)
_background: set[asyncio.Task] = set()  # strong references to fire-and-forget tasks


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:  # noqa: BLE001 - gone or not ours
        return []

# Why the "mm" route (an out-of-tree multimodal model, serving/vllm_plugin.py), measured side by
# side with `python -m benchmarks.injection_routes` (benchmarks/results/injection_routes.md):
# all three routes give the reference's greedy tokens and all three reuse the prefix cache on a
# chat's next turn about the same image (256 of 405 positions cached). Throughput and time to first
# token were within the noise of a shared 2-core machine, the mm route never behind. What separates
# them is what crosses into the engine core per request: `prompt_embeds` (pure or mixed) ships the
# whole sequence as embeddings (10x the mm payload on nano; for Vicuna-7B in fp16, 8 KiB per prompt
# position, i.e. 8 MiB for a 1000-token chat) while mm ships token ids plus 32 rows per modality.
# The mm route also keeps vLLM's own shape validation (a wrong-width tensor is rejected, not fatal).
INJECTION_ROUTE = "mm"
ROUTES = ("embeds", "mixed", "mm")


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the caller's stop strings, besides the template's own `###`
    min_new_tokens: int = 0  # no end-of-sequence token and no stop string before this many tokens

    def validate(self) -> None:
        if not (0.0 <= self.temperature <= 5.0) or self.temperature != self.temperature:
            raise InvalidArgument(f"sampling.temperature: must be in [0, 5], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidArgument(f"sampling.top_p: must be in (0, 1], got {self.top_p}")
        if not (1 <= self.max_new_tokens <= 8192):
            raise InvalidArgument(f"sampling.max_new_tokens: must be in [1, 8192], got {self.max_new_tokens}")
        if not (0 <= self.min_new_tokens <= self.max_new_tokens):
            raise InvalidArgument(f"sampling.min_new_tokens: must be in [0, max_new_tokens = {self.max_new_tokens}], "
                                  f"got {self.min_new_tokens}")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise InvalidArgument(f"sampling.seed: must be in [0, 2^63), got {self.seed}")
        if len(self.stop) > 4:
            raise InvalidArgument(f"sampling.stop: at most 4 stop strings, got {len(self.stop)}")
        for i, stop in enumerate(self.stop):
            if not stop or len(stop) > 64:
                raise InvalidArgument(f"sampling.stop[{i}]: must be 1 to 64 characters, got {len(stop)}")

    @property
    def stops(self) -> tuple[str, ...]:
        """Every string generation stops at: the template's `###` and the caller's."""
        return (STOP_STRING, *self.stop)


@dataclass(frozen=True)
class ModalityEmbeds:
    modality: str  # "image" or "audio"
    embeds: torch.Tensor  # [num_queries, llm_hidden]


@dataclass
class TextDelta:
    text: str
    token_ids: list[int]


@dataclass
class Finished:
    text: str
    finish_reason: str  # "stop" (### or EOS), "length", "abort"
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    cached_tokens: int = 0  # prompt positions served from the prefix cache (vLLM)


@dataclass
class PreparedPrompt:
    layout: PromptLayout
    rows: list[torch.Tensor]  # each modality slot's embeddings, in prompt order, float32
    max_new_tokens: int
    # the whole prompt as embeddings [seq, hidden] (token rows from the LLM's table, the slots spliced
    # in), for the engines and routes that take embeddings; None for those that take token ids
    embeds: torch.Tensor | None = None


class EmbeddingTable:
    """The LLM's token embedding matrix, read from the model directory without loading the LLM."""

    def __init__(self, llm_dir: Path):
        weights = sorted(llm_dir.glob("*.safetensors"))
        name = "model.embed_tokens.weight"
        for path in weights:
            with safe_open(str(path), framework="pt") as handle:
                if name in handle.keys():
                    self.weight = handle.get_tensor(name).float()
                    break
        else:
            raise FileNotFoundError(f"{llm_dir}: no safetensors file holds {name}")

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.weight)


class EngineBase:
    """Prompt building and validation, shared by every engine."""

    # Does the engine take the prompt as embeddings? Then the frontend holds the LLM's embedding table
    # (Vicuna-7B: 32000 x 4096 floats, 0.5 GB); engines fed token ids never load it.
    takes_prompt_embeddings = True

    def __init__(self, llm_dir: str | Path, num_query_tokens: int = 32):
        from transformers import AutoConfig

        self.llm_dir = Path(llm_dir)
        self.tokenizer = load_tokenizer(self.llm_dir)
        self.llm_cfg = llm_config_from_hf(AutoConfig.from_pretrained(str(self.llm_dir)))
        self.num_query_tokens = num_query_tokens
        self.context = self.llm_cfg.max_position_embeddings
        self._embed_table: EmbeddingTable | None = None

    @property
    def embed_table(self) -> EmbeddingTable:
        if self._embed_table is None:
            self._embed_table = EmbeddingTable(self.llm_dir)
        return self._embed_table

    def prepare(
        self, turns: Sequence[Turn], modalities: Sequence[ModalityEmbeds], sampling: SamplingOptions
    ) -> PreparedPrompt:
        sampling.validate()
        hidden = self.llm_cfg.hidden
        for i, item in enumerate(modalities):
            where = f"{item.modality}_embeddings" if item.modality in ("image", "audio") else f"modalities[{i}]"
            embeds = item.embeds
            if not isinstance(embeds, torch.Tensor):
                raise InvalidArgument(f"{where}: expected a tensor, got {type(embeds).__name__}")
            if not embeds.dtype.is_floating_point:
                raise InvalidArgument(f"{where}: dtype must be floating point, got {embeds.dtype}")
            if tuple(embeds.shape) != (self.num_query_tokens, hidden):
                raise InvalidArgument(
                    f"{where}: shape must be [{self.num_query_tokens}, {hidden}], got {list(embeds.shape)}"
                )
            if not bool(torch.isfinite(embeds).all()):
                raise InvalidArgument(f"{where}: contains NaN or infinite values")
        try:
            prompt = build_prompt(turns, [m.modality for m in modalities])
        except PromptError as exc:
            raise InvalidArgument(str(exc)) from None
        layout = layout_prompt(self.tokenizer, prompt, self.num_query_tokens, fill_id=self.tokenizer.pad_token_id or 0)
        if len(layout) >= self.context:
            raise InvalidArgument(
                f"turns: the prompt takes {len(layout)} positions, the model's context is {self.context}"
            )
        rows = [m.embeds.float() for m in modalities]
        embeds = splice_embeddings(layout, rows, self.embed_table) if self.takes_prompt_embeddings else None
        max_new = min(sampling.max_new_tokens, self.context - len(layout))
        return PreparedPrompt(layout=layout, rows=rows, max_new_tokens=max_new, embeds=embeds)

    async def start(self) -> None:  # pragma: no cover - overridden
        pass

    async def stop(self) -> None:  # pragma: no cover - overridden
        pass

    def generate(
        self,
        turns: Sequence[Turn],
        modalities: Sequence[ModalityEmbeds] = (),
        sampling: SamplingOptions = SamplingOptions(),
        request_id: str | None = None,
    ) -> AsyncIterator[TextDelta | Finished]:
        raise NotImplementedError


class VLLMEngine(EngineBase):
    """vLLM AsyncLLM with modality embeddings injected as prompt embeddings."""

    def __init__(
        self,
        llm_dir: str | Path,
        num_query_tokens: int = 32,
        dtype: str = "auto",
        route: str = INJECTION_ROUTE,
        kv_cache_gib: float = 1.0,
        max_num_seqs: int = 64,
        enable_prefix_caching: bool = True,
        restart_on_failure: bool = True,
        executor: str | None = None,
    ):
        super().__init__(llm_dir, num_query_tokens)
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        self.route = route
        self.takes_prompt_embeddings = route != "mm"  # mm: token ids + the slots' rows
        self.dtype = dtype
        self.kv_cache_gib = kv_cache_gib
        self.max_num_seqs = max_num_seqs
        self.enable_prefix_caching = enable_prefix_caching
        self.restart_on_failure = restart_on_failure
        # vLLM's distributed_executor_backend: None = vLLM's choice ("mp": the model runs in a worker process
        # the engine core talks to over a shared-memory queue), "uni": the model runs in the engine core
        self.executor = executor
        self.engine = None
        self.restarts = 0
        self.restarting = False
        self._restart_lock = asyncio.Lock()

    def _engine_args(self):
        from vllm.engine.arg_utils import AsyncEngineArgs

        if not torch.cuda.is_available():
            # The default KV sizing fails on CPU machines that report a small NUMA node.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(self.kv_cache_gib)))))
        dtype = self.dtype
        if dtype == "auto":
            dtype = "float32" if self.llm_cfg.hidden <= 1024 else ("float16" if torch.cuda.is_available() else "bfloat16")
        route_args = {"enable_prompt_embeds": True}
        if self.route == "mm":
            from serving.vllm_plugin import mm_engine_kwargs

            route_args = mm_engine_kwargs(self.num_query_tokens, self.placeholder_id)
        return AsyncEngineArgs(
            model=str(self.llm_dir),
            tokenizer=str(self.llm_dir),
            dtype=dtype,
            # On CPU, torch.compile costs ~9 s of every start and buys no throughput at c=16 (1618 vs
            # 1614 tok/s on nano, 2 cores; c=1 205 vs 224 tok/s; benchmarks/README.md, "Start-up"). On
            # GPUs compiled graphs and CUDA graphs are kept: there they pay.
            enforce_eager=not torch.cuda.is_available(),
            max_model_len=self.context,
            enable_prefix_caching=self.enable_prefix_caching,
            max_num_seqs=self.max_num_seqs,
            seed=0,
            disable_log_stats=True,
            **({"distributed_executor_backend": self.executor} if self.executor else {}),
            **route_args,
        )

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        start = time.perf_counter()
        # In a thread: building the engine takes seconds (its engine core process loads and warms up the
        # model) and must not stall the event loop. AsyncLLM starts its output handler lazily, on the
        # loop of the first request, when it is built outside a running loop.
        self.engine = await asyncio.to_thread(AsyncLLM.from_engine_args, self._engine_args())
        log.info("vLLM engine ready in %.1f s (route %s)", time.perf_counter() - start, self.route)

    async def stop(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            self._fail_in_flight(engine)
            engine.shutdown()

    @property
    def num_unfinished(self) -> int:
        return 0 if self.engine is None else self.engine.output_processor.get_num_unfinished_requests()

    @property
    def engine_core_pids(self) -> list[int]:
        """Process ids of the engine core (what a fault test kills)."""
        import psutil

        if self.engine is None:
            return []
        return [p.pid for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(_cmdline(p))]

    def problem(self) -> str | None:
        """None while the engine serves; otherwise what is wrong with it."""
        if self.restarting:
            return "the LLM engine is restarting"
        if self.engine is None:
            return "the LLM engine is not running"
        if self.engine.errored:
            return "the LLM engine core died"
        return None

    @staticmethod
    def _fail_in_flight(engine) -> None:
        """Wakes every request still waiting on `engine` with EngineDeadError: a shut-down engine
        no longer feeds their output queues, and they would wait forever."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            engine.output_processor.propagate_error(EngineDeadError())
        except Exception:  # noqa: BLE001 - best effort on an engine that is already broken
            log.exception("could not fail the dead engine's requests")

    async def restart(self, failed_engine=None) -> None:
        """Replaces the engine (`failed_engine`: only if it is still the current one). The new engine
        is built in a thread; requests meanwhile get PartUnavailable."""
        async with self._restart_lock:
            if failed_engine is not None and self.engine is not failed_engine:
                return  # replaced already
            old, self.engine = self.engine, None
            self.restarting = True
            try:
                if old is not None:
                    self._fail_in_flight(old)
                    try:
                        await asyncio.to_thread(old.shutdown)
                    except Exception:  # noqa: BLE001 - a dead engine may fail to shut down; it is replaced anyway
                        log.exception("shutting down the old engine failed")
                await self.start()
                self.restarts += 1
            finally:
                self.restarting = False

    @property
    def placeholder_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def engine_prompt(self, prepared: PreparedPrompt) -> dict:
        if self.route == "embeds":
            return {"prompt_embeds": prepared.embeds}
        if self.route == "mm":
            from serving.vllm_plugin import mm_engine_prompt

            return mm_engine_prompt(prepared.layout, prepared.rows, self.placeholder_id)
        return {
            "prompt_embeds": prepared.embeds,
            "prompt_token_ids": prepared.layout.token_ids,
            "prompt_is_token_ids": prepared.layout.is_text,
        }

    async def generate(
        self,
        turns: Sequence[Turn],
        modalities: Sequence[ModalityEmbeds] = (),
        sampling: SamplingOptions = SamplingOptions(),
        request_id: str | None = None,
    ) -> AsyncIterator[TextDelta | Finished]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        prepared = self.prepare(turns, modalities, sampling)
        problem = self.problem()
        if problem is not None:
            raise PartUnavailable("llm", f"{problem}; retry shortly")
        engine = self.engine
        request_id = request_id or uuid.uuid4().hex
        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=prepared.max_new_tokens,
            min_tokens=min(sampling.min_new_tokens, prepared.max_new_tokens),
            seed=sampling.seed,
            stop=list(sampling.stops),
            output_kind=RequestOutputKind.DELTA,
        )
        start = time.perf_counter()
        first_token_s = None
        finish_reason = None
        finished = False
        cached_tokens = 0
        # Text comes from our own detokenizer over the token ids (vLLM's stops at `###` in the
        # engine): the same streaming rules as the PyTorch engine, and the final text is exactly
        # the full decode even when a model emits invalid UTF-8 byte sequences.
        stream = StopStringStream(self.tokenizer, sampling.stops, min_tokens=sampling.min_new_tokens)
        try:
            async for output in engine.generate(self.engine_prompt(prepared), params, request_id):
                choice = output.outputs[0]
                if choice.token_ids and first_token_s is None:
                    first_token_s = time.perf_counter() - start
                if choice.token_ids:
                    delta = "".join(stream.push(token_id)[0] for token_id in choice.token_ids)
                    yield TextDelta(text=delta, token_ids=list(choice.token_ids))
                if output.finished:
                    finish_reason = choice.finish_reason or "stop"
                    cached_tokens = getattr(output, "num_cached_tokens", None) or 0
            finished = True
            tail = stream.flush()
            if tail:
                yield TextDelta(text=tail, token_ids=[])
        except EngineDeadError:
            if self.restart_on_failure:
                task = asyncio.get_running_loop().create_task(self.restart(engine))
                _background.add(task)
                task.add_done_callback(_background.discard)
            raise PartUnavailable("llm", "the LLM engine failed during this request; it is being restarted") from None
        finally:
            if not finished:
                # cancelled by the caller (or failed): free the engine slot now
                if engine.is_running and not engine.errored:
                    await asyncio.shield(engine.abort(request_id))
        total = time.perf_counter() - start
        yield Finished(
            text=stream.text,
            finish_reason=finish_reason or "stop",
            prompt_tokens=len(prepared.layout),
            completion_tokens=len(stream.token_ids),
            timings={"first_token_s": first_token_s or total, "generate_s": total},
            cached_tokens=cached_tokens,
        )


class TorchEngine(EngineBase):
    """Plain PyTorch generation, one request at a time in a worker thread: the baseline."""

    def __init__(self, llm_dir: str | Path, num_query_tokens: int = 32):
        super().__init__(llm_dir, num_query_tokens)
        self.model = None
        self._lock = threading.Lock()
        self._ids = itertools.count()

    async def start(self) -> None:
        from bubogpt.llm import load_llm

        self.model = await asyncio.to_thread(load_llm, self.llm_dir)

    async def stop(self) -> None:
        self.model = None

    def _run(self, prepared: PreparedPrompt, sampling: SamplingOptions, queue: asyncio.Queue, loop, cancelled: threading.Event):
        def emit(item):
            loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            with self._lock:
                emit(("started", time.perf_counter()))
                eos = self.tokenizer.eos_token_id
                for next_id in decode_tokens(self.model, prepared.embeds, prepared.max_new_tokens, temperature=sampling.temperature,
                                             top_p=sampling.top_p, seed=sampling.seed, eos_token_id=eos,
                                             min_new_tokens=sampling.min_new_tokens):
                    if cancelled.is_set():
                        emit(("done", "abort"))
                        return
                    emit(("token", next_id))
                    if next_id == eos:
                        emit(("done", "stop"))
                        return
                emit(("done", "length"))
        except Exception as exc:  # noqa: BLE001 - reported to the awaiting request
            emit(("error", exc))

    async def generate(
        self,
        turns: Sequence[Turn],
        modalities: Sequence[ModalityEmbeds] = (),
        sampling: SamplingOptions = SamplingOptions(),
        request_id: str | None = None,
    ) -> AsyncIterator[TextDelta | Finished]:
        prepared = self.prepare(turns, modalities, sampling)
        if self.model is None:
            raise PartUnavailable("llm", "the LLM engine is not running")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        start = time.perf_counter()
        worker = loop.run_in_executor(None, self._run, prepared, sampling, queue, loop, cancelled)
        stream = StopStringStream(self.tokenizer, sampling.stops, min_tokens=sampling.min_new_tokens)
        first_token_s, finish_reason = None, None
        try:
            while finish_reason is None:
                kind, value = await queue.get()
                if kind == "token":
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - start
                    delta, stopped = stream.push(value)
                    yield TextDelta(text=delta, token_ids=[value])
                    if stopped:
                        cancelled.set()
                        finish_reason = "stop"
                elif kind == "done":
                    finish_reason = value
                    tail = stream.flush()
                    if tail:
                        yield TextDelta(text=tail, token_ids=[])
                elif kind == "error":
                    raise PartUnavailable("llm", f"the PyTorch engine failed: {value}")
        finally:
            cancelled.set()
            await worker
        total = time.perf_counter() - start
        yield Finished(
            text=stream.text,
            finish_reason=finish_reason,
            prompt_tokens=len(prepared.layout),
            completion_tokens=len(stream.token_ids),
            timings={"first_token_s": first_token_s or total, "generate_s": total},
        )


class StopStringStream:
    """Incremental detokenization that never emits text it may have to take back.

    Two things can change already-decoded text: a tail that may still grow into a stop string, and
    a run of byte-fallback tokens (`<0xNN>`), which decodes as one UTF-8 sequence and turns into
    replacement characters as a whole if it ends up invalid. Both are held back until they are
    settled, so the concatenated deltas always equal the final text.

    Cost per token does not grow with the answer: each push decodes a window of the last few tokens
    (the text of the newest ones is the window's decode minus the decode of its older part, as in
    vLLM's incremental detokenizer: the older tokens give the newest their context, e.g. a leading
    space), and looks for stop strings only where a new one can begin.
    """

    CONTEXT = 4  # tokens before the new ones that are decoded with them

    def __init__(self, tokenizer, stops: tuple[str, ...] = (STOP_STRING,), min_tokens: int = 0):
        self.tokenizer = tokenizer
        self.stops = stops
        # stop strings count only from the token after the first `min_tokens` (as vLLM's min_tokens)
        self.min_tokens = min_tokens
        self.token_ids: list[int] = []
        self.byte_tokens = byte_fallback_ids(tokenizer)
        self._decoded = ""  # the decode of token_ids[:self._read] (the settled tokens)
        self._read = 0
        self._emitted = 0  # characters of _decoded sent as deltas
        self._searched = 0  # characters of _decoded searched for stop strings
        self._stopped = False
        self._longest_stop = max(len(stop) for stop in stops)

    @property
    def text(self) -> str:
        """Everything emitted so far (the concatenated deltas)."""
        return self._decoded[: self._emitted]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _settle(self, upto: int) -> None:
        """Decodes token_ids[_read:upto] onto _decoded."""
        if upto <= self._read:
            return
        start = max(0, self._read - self.CONTEXT)
        context = self._decode(self.token_ids[start : self._read])
        window = self._decode(self.token_ids[start:upto])
        if window.startswith(context):
            self._decoded += window[len(context) :]
        else:
            # the new tokens changed how their context decodes (seen only on nonsense id sequences):
            # decode it all, keeping what was emitted
            full, emitted = self._decode(self.token_ids[:upto]), self.text
            self._decoded = full if full.startswith(emitted) else emitted + full[len(emitted) :]
            self._searched = min(self._searched, self._emitted)
        self._read = upto

    def push(self, token_id: int) -> tuple[str, bool]:
        self.token_ids.append(token_id)
        settled = len(self.token_ids)
        while settled > self._read and self.token_ids[settled - 1] in self.byte_tokens:
            settled -= 1  # a byte-fallback run: its text is known once a token that is not a byte follows
        self._settle(settled)
        return self._emit(final=False)

    def _emit(self, final: bool) -> tuple[str, bool]:
        if self._stopped:
            return "", True
        decoded = self._decoded
        # a stop string can only begin where the last search could not see all of it
        begin = max(self._emitted, self._searched - self._longest_stop + 1)
        if self._read <= self.min_tokens:
            cut, self._stopped = decoded[begin:], False  # too early for a stop: not searched, only held back
        else:
            cut, self._stopped = truncate_at_stop(decoded[begin:], self.stops)
        if self._stopped:
            end = begin + len(cut)
        else:
            self._searched = len(decoded)
            held = 0 if final else max((k for stop in self.stops for k in range(len(stop) - 1, 0, -1)
                                        if decoded.endswith(stop[:k])), default=0)
            end = len(decoded) - held
        if end <= self._emitted:
            return "", self._stopped
        delta = decoded[self._emitted : end]
        self._emitted = end
        return delta, self._stopped

    def flush(self) -> str:
        self._settle(len(self.token_ids))
        return self._emit(final=True)[0]


def byte_fallback_ids(tokenizer) -> frozenset[int]:
    """Ids of SentencePiece-style byte tokens `<0x00>` ... `<0xFF>` (empty for other tokenizers)."""
    vocab = tokenizer.get_vocab()
    return frozenset(vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab)


def engine_completion(engine: EngineBase, max_new_tokens: int = 160):
    """An async `prompt -> text` function on the served LLM (greedy), e.g. for the LLM entity matcher."""

    async def complete(prompt: str) -> str:
        text = ""
        async for event in engine.generate([Turn("user", prompt)], (), SamplingOptions(temperature=0.0, max_new_tokens=max_new_tokens)):
            if isinstance(event, Finished):
                text = event.text
        return text

    return complete


def create_engine(kind: str, llm_dir: str | Path, num_query_tokens: int = 32, **kwargs) -> EngineBase:
    if kind == "vllm":
        return VLLMEngine(llm_dir, num_query_tokens, **kwargs)
    if kind == "torch":
        return TorchEngine(llm_dir, num_query_tokens)
    raise ValueError(f"unknown LLM engine {kind!r}; choose vllm or torch")
