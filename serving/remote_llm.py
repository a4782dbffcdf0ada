"""The LLM as a remote tier: one or more `bubo llm-server`s (stock vLLM, OpenAI-compatible) behind the frontend.

`RemoteLLMEngine` has the in-process engines' interface (serving/llm_engine.py), so the frontend does
not know which one it runs on. Per request it builds the same prompt layout, then calls
`/v1/completions` with `stream=true` and `return_token_ids=true`:

* text only: `prompt` = the layout's token ids (what the in-process "mm" route sends);
* with an image or audio: `prompt_embeds` = the whole prompt as embeddings (the token rows from the
  LLM's table, the modality rows spliced in), `torch.save` + base64. vLLM's OpenAI API has no way to
  send precomputed rows for placeholder positions of a raw prompt (its `image_embeds` chat parts go
  through the chat template and the model's placeholder string), so this is the route the stock server
  takes; what it costs on the wire is measured in benchmarks/README.md ("Split topology").

The text the client sees comes from our own detokenizer over the streamed token ids
(`StopStringStream`), exactly as in-process. Leaving the stream (the client cancelled, the answer was
cut) closes the HTTP response, and vLLM aborts a request whose client disconnected.

Several servers: each request goes to the one with the fewest requests in flight (round-robin among
equals). A server that refuses the connection, answers 5xx or an error event, or fails its `/health`
probe is marked down until a probe finds it well again (or `retry_after_s` passed); a request that had
not streamed a token yet moves on to the next server, one that had fails with UNAVAILABLE (its text
cannot be taken back; `serving.client.chat_events` resumes it). Streams open on a server that failed
`frozen_after_probes` probes in a row are closed, so a frozen server holds no request. A server that
serves another model is never used. The engine is down (the health service says NOT_SERVING) only
while no server answers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Sequence

import torch

from bubogpt.prompt import Turn, splice_embeddings
from serving.errors import InvalidArgument, PartFailed, PartUnavailable
from serving.llm_engine import EngineBase, Finished, ModalityEmbeds, PreparedPrompt, SamplingOptions, StopStringStream, TextDelta

log = logging.getLogger(__name__)


@dataclass
class LLMServer:
    """One `bubo llm-server` and what the frontend knows about it."""

    url: str  # http://host:port
    in_flight: int = 0
    down_until: float = 0.0  # monotonic time before which it is not tried
    reason: str = ""  # why it is down
    served: int = 0
    checked: bool = False  # its model was checked against ours (`RemoteLLMEngine._check_model`)
    probe_failures: int = 0  # consecutive failed /health probes
    open: set = field(default_factory=set)  # the responses streaming from it now

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_down(self, reason: str, retry_after_s: float) -> None:
        if self.up:
            log.warning("LLM server %s is down: %s (tried again in %.0f s)", self.url, reason, retry_after_s)
        self.down_until = time.monotonic() + retry_after_s
        self.reason = reason

    def mark_up(self) -> None:
        if self.down_until:
            log.info("LLM server %s answers again", self.url)
        self.down_until = 0.0
        self.reason = ""


class WrongModel(Exception):
    """An LLM server that serves another model than this frontend's."""


class _Refused(Exception):
    """The server did not take the request (connection refused, 5xx before any token): try another."""


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


class RemoteLLMEngine(EngineBase):
    takes_prompt_embeddings = False  # only requests with a modality need the table (prepare())

    def __init__(
        self,
        llm_dir: str | Path,
        urls: Sequence[str],
        num_query_tokens: int = 32,
        model: str | None = None,
        retry_after_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        start_timeout_s: float = 120.0,
        frozen_after_probes: int = 3,
    ):
        super().__init__(llm_dir, num_query_tokens)
        if not urls:
            raise ValueError("RemoteLLMEngine needs at least one URL")
        self.servers = [LLMServer(normalize_url(u)) for u in urls]
        self.model = model  # the served model name; default: what the first server lists
        self.retry_after_s = retry_after_s
        self.connect_timeout_s = connect_timeout_s
        self.start_timeout_s = start_timeout_s
        self.frozen_after_probes = frozen_after_probes  # failed probes in a row before its open streams are closed
        # vLLM casts what it gets to the model's dtype; fp16 on the wire halves the bytes at real size
        self.wire_dtype = torch.float32 if self.llm_cfg.hidden <= 1024 else torch.float16
        self.session = None
        self._next = 0
        self.metrics = None  # serving.prometheus.ServerMetrics: bytes on the wire, requests per server

    # ------------------------------------------------------------------ lifecycle and health

    async def start(self) -> None:
        """Connects; waits up to `start_timeout_s` for a server to answer. If none does, the frontend
        starts anyway with the LLM part down (health NOT_SERVING) and the supervisor's probes find the
        servers when they come up (an LLM tier can take minutes to load a 7B model; frontends must not
        restart in a loop meanwhile)."""
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s))
        # the table is read now, not on the first image request (Vicuna-7B: 0.5 GB)
        await asyncio.to_thread(lambda: self.embed_table)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            await self.check_health()
            if any(s.up for s in self.servers):
                break
            if time.monotonic() > deadline:
                log.warning("no LLM server answered within %.0f s (%s); serving NOT_SERVING until one does",
                            self.start_timeout_s, self._reasons())
                return
            await asyncio.sleep(1.0)
        log.info("remote LLM tier: %s (model %s)", ", ".join(s.url for s in self.servers), self.model)

    async def _check_model(self, server: LLMServer, timeout) -> None:
        """A server must serve a model with this directory's context (the same LLM) under the name the
        others use; one that does not is never used (and said so, once)."""
        async with self.session.get(f"{server.url}/v1/models", timeout=timeout) as response:
            answer = await response.json(content_type=None)
        listed = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
            raise WrongModel(f"{server.url}/v1/models did not answer a model list")
        entry = next((m for m in listed if m.get("id") == self.model), None) if self.model else (listed[0] if listed else None)
        if entry is None:
            raise WrongModel(f"{server.url} does not serve {self.model or 'a model'} (it serves {[m.get('id') for m in listed]})")
        max_len = entry.get("max_model_len")
        if max_len is not None and int(max_len) != self.context:
            raise WrongModel(f"{server.url} serves {entry['id']} with a context of {max_len}, but {self.llm_dir} has "
                             f"{self.context}: not the same LLM")
        self.model = entry["id"]
        server.checked = True

    async def stop(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    async def check_health(self, timeout_s: float = 2.0) -> None:
        """Probes every server's `/health` (the supervisor calls this); a down server that answers is up again."""
        import aiohttp

        async def probe(server: LLMServer) -> None:
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            try:
                async with self.session.get(f"{server.url}/health", timeout=timeout) as response:
                    if response.status != 200:
                        raise ConnectionError(f"/health answered {response.status}")
                if not server.checked:
                    await self._check_model(server, timeout)
                server.probe_failures = 0
                server.mark_up()
            except WrongModel as exc:
                if server.reason != str(exc):
                    log.error("LLM server %s is not used: %s", server.url, exc)
                server.checked = False
                server.mark_down(str(exc), self.retry_after_s)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                server.probe_failures += 1
                server.mark_down(_describe(exc), self.retry_after_s)
                if server.probe_failures >= self.frozen_after_probes and server.open:
                    # frozen or cut off: its streams would wait for ever; closing them ends each in its
                    # request's own terms (moved to another server if nothing streamed, UNAVAILABLE if it had)
                    log.warning("closing %d streams of LLM server %s (%d failed probes)", len(server.open), server.url,
                                server.probe_failures)
                    for response in list(server.open):
                        response.close()

        await asyncio.gather(*(probe(s) for s in self.servers))

    def problem(self) -> str | None:
        if self.session is None:
            return "the remote LLM tier is not connected"
        if any(s.up for s in self.servers):
            return None
        return f"no LLM server answers: {self._reasons()}"

    def _reasons(self) -> str:
        return "; ".join(f"{s.url} ({s.reason or 'no answer'})" for s in self.servers)

    @property
    def num_unfinished(self) -> int:
        return sum(s.in_flight for s in self.servers)

    # ------------------------------------------------------------------ requests

    def prepare(self, turns: Sequence[Turn], modalities: Sequence[ModalityEmbeds], sampling: SamplingOptions) -> PreparedPrompt:
        prepared = super().prepare(turns, modalities, sampling)
        if prepared.rows:
            prepared.embeds = splice_embeddings(prepared.layout, prepared.rows, self.embed_table)
        return prepared

    def request_body(self, prepared: PreparedPrompt, sampling: SamplingOptions) -> dict:
        body = {
            "model": self.model,
            "max_tokens": prepared.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(sampling.stops),
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.min_new_tokens:
            body["min_tokens"] = min(sampling.min_new_tokens, prepared.max_new_tokens)
        if prepared.embeds is None:
            body["prompt"] = list(prepared.layout.token_ids)
        else:
            buffer = io.BytesIO()
            torch.save(prepared.embeds.to(self.wire_dtype).contiguous(), buffer)
            body["prompt_embeds"] = base64.b64encode(buffer.getvalue()).decode()
        return body

    def _order(self) -> list[LLMServer]:
        """Servers to try: the up ones, fewest in flight first (round-robin among equals), then the down ones
        known to serve our model (one may be back before its probe says so); never an unchecked one."""
        n = len(self.servers)
        self._next = (self._next + 1) % n
        rotated = self.servers[self._next:] + self.servers[: self._next]
        up = sorted((s for s in rotated if s.up), key=lambda s: s.in_flight)
        return up + [s for s in rotated if not s.up and s.checked]

    async def generate(
        self,
        turns: Sequence[Turn],
        modalities: Sequence[ModalityEmbeds] = (),
        sampling: SamplingOptions = SamplingOptions(),
        request_id: str | None = None,
    ) -> AsyncIterator[TextDelta | Finished]:
        prepared = self.prepare(turns, modalities, sampling)
        problem = self.problem()
        if problem is not None:
            raise PartUnavailable("llm", f"{problem}; retry shortly")
        body = self.request_body(prepared, sampling)
        body["request_id"] = request_id or uuid.uuid4().hex
        payload = json.dumps(body).encode()
        start = time.perf_counter()
        refused = []
        for server in self._order():
            stream = StopStringStream(self.tokenizer, sampling.stops, min_tokens=sampling.min_new_tokens)
            state = {"first_token_s": None, "finish_reason": None, "usage": {}}
            try:
                # aclosing: when our consumer leaves, the HTTP response is closed now (vLLM aborts), not at GC
                async with aclosing(self._stream(server, payload, stream, state, start)) as deltas:
                    async for delta in deltas:
                        yield delta
            except _Refused as exc:
                refused.append(f"{server.url} ({exc})")
                continue
            tail = stream.flush()
            if tail:
                yield TextDelta(text=tail, token_ids=[])
            total = time.perf_counter() - start
            usage = state["usage"]
            yield Finished(
                text=stream.text,
                finish_reason=state["finish_reason"] or "stop",
                prompt_tokens=len(prepared.layout),
                completion_tokens=len(stream.token_ids),
                timings={"first_token_s": state["first_token_s"] or total, "generate_s": total},
                cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            )
            return
        raise PartUnavailable("llm", "no LLM server took the request: " + "; ".join(refused))

    async def _stream(self, server: LLMServer, payload: bytes, stream: StopStringStream, state: dict, start: float):
        """One attempt on one server. `_Refused` while nothing has streamed (the caller tries the next
        server); after that, a failure is PartUnavailable (the text already sent cannot be taken back)."""
        import aiohttp

        server.in_flight += 1
        streamed = finished = False
        response = None
        if self.metrics is not None:
            self.metrics.llm_wire_bytes.labels("sent").inc(len(payload))
            self.metrics.llm_requests.labels(server.url).inc()

        def failed(reason: str, retry: bool = True):
            if retry:
                server.mark_down(reason, self.retry_after_s)
            if not streamed:
                return _Refused(reason)
            return PartUnavailable("llm", f"the LLM server {server.url} failed during this request: {reason}")

        try:
            try:
                response = await self.session.post(f"{server.url}/v1/completions", data=payload,
                                                   headers={"content-type": "application/json"})
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise failed(_describe(exc)) from None
            server.open.add(response)  # a probe that finds the server frozen closes it (check_health)
            async with response:
                if response.status != 200:
                    try:
                        body = await response.read()
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                        raise failed(_describe(exc)) from None
                    message = _error_message(body)
                    if response.status in (400, 422):
                        # our own validation passed; name the field vLLM refused (its `param`), in our request's terms
                        field = REQUEST_FIELDS.get(_error_param(body), "turns")
                        raise InvalidArgument(f"{field}: the LLM server refused the request: {message}")
                    if response.status >= 500 or response.status == 429:
                        raise failed(f"answered {response.status}: {message}", retry=response.status != 429)
                    raise PartFailed("llm", f"the LLM server {server.url} answered {response.status}: {message}")
                try:
                    async for event in _sse_events(response, self.metrics):
                        error = event.get("error")
                        if error is not None and not event.get("choices"):
                            code = int(error.get("code") or 500) if isinstance(error, dict) else 500
                            raise failed(f"its engine failed ({code}): {_error_message(json.dumps(event).encode())}",
                                         retry=code >= 500)
                        if event.get("usage"):
                            state["usage"] = event["usage"]
                        for choice in event.get("choices") or ():
                            ids = choice.get("token_ids") or []
                            if ids:
                                streamed = True
                                if state["first_token_s"] is None:
                                    state["first_token_s"] = time.perf_counter() - start
                                text = "".join(stream.push(int(t))[0] for t in ids)
                                yield TextDelta(text=text, token_ids=[int(t) for t in ids])
                            if choice.get("finish_reason"):
                                state["finish_reason"] = choice["finish_reason"]
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                    # the connection broke (or a probe closed it), or the stream ended early or garbled
                    raise failed(_describe(exc)) from None
            finished = True
            server.served += 1
        finally:
            server.in_flight -= 1
            if response is not None:
                server.open.discard(response)
                if not finished:
                    response.close()  # drop the connection: vLLM sees the client leave and aborts the request


async def _sse_events(response, metrics=None) -> AsyncIterator[dict]:
    """The JSON events of an OpenAI-style server-sent-event stream, up to `data: [DONE]` (a stream that
    ends without it broke: ValueError). Parsed from raw chunks: the first event (it carries the prompt's
    token ids) can be longer than aiohttp's line limit."""
    buffer = b""
    async for chunk in response.content.iter_any():
        if metrics is not None:
            metrics.llm_wire_bytes.labels("received").inc(len(chunk))
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            for line in block.splitlines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                event = json.loads(data)  # a JSONDecodeError is a ValueError
                if not isinstance(event, dict):
                    raise ValueError(f"an event that is not an object: {data[:100]!r}")
                yield event
    raise ValueError("the stream ended before [DONE]")


# vLLM's `param` of an error -> the field of our request it came from
REQUEST_FIELDS = {"temperature": "sampling.temperature", "top_p": "sampling.top_p", "seed": "sampling.seed",
                  "max_tokens": "sampling.max_new_tokens", "stop": "sampling.stop"}


def _error_param(body: bytes) -> str | None:
    try:
        error = json.loads(body)
        error = error.get("error", error)
        return error.get("param") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body)
        error = error.get("error", error)
        return str(error.get("message", error)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
