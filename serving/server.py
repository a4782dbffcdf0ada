"""The gRPC frontend (`bubo.v1.Bubo`): validates, encodes through Triton, streams from the LLM engine,
grounds the answer.

Per Chat request:
  1. refuse when draining (UNAVAILABLE), validate every field (INVALID_ARGUMENT naming the field),
     check that the parts it needs are up (UNAVAILABLE naming the part) and take a stream slot
     (RESOURCE_EXHAUSTED when all are taken);
  2. grounding of the image starts at once, in the background;
  3. image/audio embeddings from the Triton ensembles (content-hash cache), concurrently;
  4. token deltas streamed from the LLM engine as they come, and between them an entity event for
     each phrase as soon as it is final and the grounding result is there (`EntityStream`);
  5. when the answer is complete: the configured matcher adds the entities not sent yet;
  6. a Done event with the finish reason, token counts and timings.
A client that cancels, disconnects or runs out of deadline aborts its generation; its Triton calls
run to their end (cancelling them can crash Triton: serving/triton_client.py) and land in the cache.
Every failure is answered through one table (serving/errors.py): never UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from bubogpt.grounding.matching import EntityMatcher, RuleEntityMatcher
from bubogpt.grounding.matching.incremental import IncrementalMatcher
from bubogpt.grounding.pipeline import GroundingResult
from bubogpt.grounding.schema import GroundedEntity
from bubogpt.prompt import Turn
from serving.encoders import TritonEncoders
from serving.errors import InvalidArgument, Overloaded, PartFailed, RequestTimeout, ShuttingDown, Unsupported, status_of
from serving.llm_engine import EngineBase, ModalityEmbeds, SamplingOptions, TextDelta
from serving.prometheus import ServerMetrics
from serving.proto import bubo_pb2, bubo_pb2_grpc
from serving.supervisor import Part

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_audio_bytes: int = 50 * 1024 * 1024
    max_turns: int = 64
    max_turn_chars: int = 16_000
    max_total_chars: int = 64_000  # all turns together: refused before any tokenizing
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 256
    max_concurrent_streams: int = 64
    request_timeout_s: float = 300.0


class Grounder(Protocol):
    async def ground(self, image: bytes) -> GroundingResult: ...


ROLES = {bubo_pb2.ROLE_USER: "user", bubo_pb2.ROLE_ASSISTANT: "assistant"}


def validate_chat(request, limits: Limits) -> tuple[list[Turn], SamplingOptions]:
    if not request.turns:
        raise InvalidArgument("turns: at least one user turn is required")
    if len(request.turns) > limits.max_turns:
        raise InvalidArgument(f"turns: {len(request.turns)} turns, the limit is {limits.max_turns}")
    total = sum(len(turn.text) for turn in request.turns)
    if total > limits.max_total_chars:
        raise InvalidArgument(f"turns: {total} characters in all, the limit is {limits.max_total_chars}")
    turns = []
    for i, turn in enumerate(request.turns):
        if turn.role not in ROLES:
            raise InvalidArgument(f"turns[{i}].role: must be ROLE_USER or ROLE_ASSISTANT")
        if len(turn.text) > limits.max_turn_chars:
            raise InvalidArgument(f"turns[{i}].text: {len(turn.text)} characters, the limit is {limits.max_turn_chars}")
        # an empty first question is fine when an image or audio is attached ("tell me about it")
        if not turn.text.strip() and not (i == 0 and (request.image or request.audio)):
            raise InvalidArgument(f"turns[{i}].text: empty")
        turns.append(Turn(ROLES[turn.role], turn.text))
    validate_media(request.image, request.audio, limits)
    if request.ground and not request.image:
        raise InvalidArgument("ground: grounding needs an image")
    sampling = request.sampling
    max_new = sampling.max_new_tokens or limits.default_max_new_tokens
    if max_new > limits.max_new_tokens:
        raise InvalidArgument(f"sampling.max_new_tokens: {max_new}, the limit is {limits.max_new_tokens}")
    options = SamplingOptions(
        temperature=sampling.temperature,
        top_p=sampling.top_p or 1.0,
        max_new_tokens=max_new,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop=tuple(sampling.stop),
        min_new_tokens=sampling.min_new_tokens,
    )
    options.validate()
    return turns, options


def validate_media(image: bytes, audio: bytes, limits: Limits) -> None:
    if len(image) > limits.max_image_bytes:
        raise InvalidArgument(f"image: {len(image)} bytes, the limit is {limits.max_image_bytes}")
    if len(audio) > limits.max_audio_bytes:
        raise InvalidArgument(f"audio: {len(audio)} bytes, the limit is {limits.max_audio_bytes}")


def _check_decoded(request) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument(f"request: the bytes are not a valid {request.message_type} message ({request.error})")


def entity_message(entity: GroundedEntity, phrase: str = "", start: int = 0, end: int = 0):
    rle = entity.mask_rle() if entity.mask is not None else None
    mask = bubo_pb2.Mask(height=rle["size"][0], width=rle["size"][1], counts=rle["counts"]) if rle else None
    x0, y0, x1, y1 = entity.box_xyxy
    return bubo_pb2.Entity(
        index=entity.index, phrase=phrase, start=start, end=end, label=entity.label, score=float(entity.score),
        box=bubo_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1), mask=mask,
    )


GROUNDED = object()  # marks, between the LLM's events, the moment the grounding result arrived
_END = object()


async def wake_on(task: asyncio.Task, events: AsyncIterator):
    """`events`, with `GROUNDED` yielded between them the moment `task` ends (when it ends first), so
    the entities already written go out then, not with the next token. Closing this closes `events`
    (the engine's generator aborts its request there)."""
    pending, marked = None, False
    try:
        while not task.done():
            pending = asyncio.ensure_future(anext(events, _END))
            await asyncio.wait({pending, task}, return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                marked = True
                yield GROUNDED
            event = await pending
            pending = None
            if event is _END:
                return
            yield event
        if not marked:
            yield GROUNDED  # it landed while the consumer was busy with the last event
        async for event in events:
            yield event
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # the engine's generator aborts its request in its own finally
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        await events.aclose()


class EntityStream:
    """The grounded entities of one answer: each as soon as its phrase is final and the grounding result
    is there (`on_text`, while the answer is written), the rest when the answer is complete (`finish`).
    Records, per entity, how long after its phrase's last token it went out."""

    def __init__(self, ground_task: asyncio.Task, stream_matcher: EntityMatcher | None, final_matcher: EntityMatcher):
        self.task = ground_task
        self.stream_matcher = stream_matcher  # None: every entity waits for the complete answer
        self.final_matcher = final_matcher
        self.result: GroundingResult | None = None
        self.grounding_s = 0.0
        self.matcher: IncrementalMatcher | None = None
        self.reached: list[tuple[int, float]] = []  # (answer length, when the text got there)
        self.sent: list[tuple[int, int, float, int]] = []  # (entity index, start, ms after its phrase, answer length then)

    def _ready(self) -> None:
        self.result, self.grounding_s = self.task.result()  # raises what the grounding raised
        self.matcher = IncrementalMatcher(self.stream_matcher or self.final_matcher, [e.label for e in self.result.entities])

    def on_text(self, text: str, delta: str) -> list:
        """Entities made final by `delta` (the answer so far is `text`)."""
        self.reached.append((len(text), time.perf_counter()))
        if self.matcher is not None and all(c.isalnum() for c in delta):
            return []  # a phrase can only become final where a word ends
        return self.on_grounded(text)

    def on_grounded(self, text: str) -> list:
        """Entities of `text` that are final, once the grounding result is there."""
        if self.stream_matcher is None or not self.task.done():
            return []
        if self.matcher is None:
            self._ready()
        return self._events(self.matcher.settled(text), len(text))

    async def finish(self, text: str) -> list:
        if self.matcher is None:
            await asyncio.wait({self.task})
            self._ready()
        final = await self.final_matcher.amatch(text, self.matcher.labels)
        return self._events(self.matcher.finish(text, final), len(text))

    def timings(self, text: str) -> list:
        """`Done.entity_timings` of the complete answer `text`."""
        return [bubo_pb2.EntityTiming(index=index, start=start, after_phrase_ms=ms, before_answer_end=written < len(text))
                for index, start, ms, written in self.sent]

    def _events(self, matches, written: int) -> list:
        now = time.perf_counter()
        events = []
        for match in matches:
            phrase_done = next((when for length, when in self.reached if length >= match.end), now)
            self.sent.append((match.entity_index, match.start, (now - phrase_done) * 1e3, written))
            entity = self.result.entities[match.entity_index]
            events.append(bubo_pb2.ChatEvent(entity=entity_message(entity, match.phrase, match.start, match.end)))
        return events


@dataclass
class RpcCall:
    request_id: str
    start: float
    code: grpc.StatusCode = grpc.StatusCode.OK


class Failure(Exception):
    """A request that failed, as its door answers it: gRPC status, HTTP status, message, the part named."""

    def __init__(self, code: grpc.StatusCode, http: int, message: str, part: str | None, cause: BaseException):
        super().__init__(message)
        self.code, self.http, self.message, self.part, self.cause = code, http, message, part, cause


class BuboService(bubo_pb2_grpc.BuboServicer):
    def __init__(
        self,
        encoders: TritonEncoders,
        engine: EngineBase,
        grounder: Grounder | None = None,
        matcher: EntityMatcher | None = None,
        limits: Limits = Limits(),
        metrics: ServerMetrics | None = None,
        parts: dict[str, Part] | None = None,
        incremental_entities: bool = True,
    ):
        self.encoders = encoders
        self.engine = engine
        self.grounder = grounder
        self.matcher = matcher or RuleEntityMatcher()
        self.limits = limits
        self.metrics = metrics or ServerMetrics()
        parts = parts or {}
        self.triton = parts.get("triton") or encoders.triton.part
        self.llm = parts.get("llm") or Part("llm", "the LLM engine")
        self.active_streams = 0
        self.in_flight = 0  # Chat and Ground RPCs being answered (what a drain waits for)
        self.draining = False
        # entities go out while the answer is written, each as soon as its phrase is final (rule
        # matcher); the configured matcher (the LLM's, for bubogpt-7b) adds the rest at the end
        self.stream_matcher = RuleEntityMatcher() if incremental_entities else None

    # -- one way to fail ---------------------------------------------------------------------------

    def _inner_cancel(self) -> bool:
        """A CancelledError that is not this RPC being cancelled (the client went away) came from a part."""
        task = asyncio.current_task()
        return task is not None and not task.cancelling()

    @contextlib.asynccontextmanager
    async def answering(self, method: str):
        """One request, through any door (gRPC, HTTP): counted in flight (what a drain waits for), its
        final status in the metrics, and every failure turned into a `Failure` by the error table. A
        cancel by the client stays a cancel; a CancelledError that did not come from the client is a
        failure of ours."""
        call = RpcCall(uuid.uuid4().hex, time.perf_counter())
        self.in_flight += 1
        try:
            yield call
        except asyncio.CancelledError as exc:
            if not self._inner_cancel():
                call.code = grpc.StatusCode.CANCELLED
                log.info("%s cancelled by the client", method, extra={"request_id": call.request_id})
                raise
            raise self._failure(call, exc, method) from exc
        except Exception as exc:  # noqa: BLE001 - every failure gets its status from the one table
            raise self._failure(call, exc, method) from exc
        finally:
            self.in_flight -= 1
            self.metrics.observe_request(method, call.code.name, time.perf_counter() - call.start)

    def _failure(self, call: RpcCall, exc: BaseException, method: str) -> Failure:
        code, http, message = status_of(exc, call.request_id)
        call.code = code
        if code == grpc.StatusCode.INTERNAL and not isinstance(exc, PartFailed):
            log.error("%s failed", method, exc_info=exc, extra={"request_id": call.request_id})
        else:
            log.info("%s refused: %s %s", method, code.name, message, extra={"request_id": call.request_id})
        return Failure(code, http, message, getattr(exc, "part", None), exc)

    @staticmethod
    async def _abort(context, failure: Failure):
        """The gRPC answer to a failure; a failed part is also named in the trailing metadata
        (`bubo-part: triton|llm`), for clients that wait for it to come back."""
        metadata = (("bubo-part", failure.part),) if failure.part else ()
        await context.abort(failure.code, failure.message, trailing_metadata=metadata)

    # -- Chat -------------------------------------------------------------------------------------

    async def Chat(self, request, context):
        try:
            async with self.answering("Chat") as call:
                async for event in self.chat(request, call.request_id, call.start):
                    yield event
        except Failure as failure:
            await self._abort(context, failure)

    async def chat(self, request, request_id: str, start: float):
        """The answer to a `bubo.v1.ChatRequest` as `ChatEvent`s; raises what `answering` turns into a status."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; send new requests to another replica")
        _check_decoded(request)
        turns, sampling = validate_chat(request, self.limits)
        if request.ground and self.grounder is None:
            raise Unsupported("ground: this server has no grounding models")
        if request.image or request.audio:
            self.triton.require()
        self.llm.require()
        if self.active_streams >= self.limits.max_concurrent_streams:
            raise Overloaded(f"the server is at its limit of {self.limits.max_concurrent_streams} concurrent streams; retry later")
        self.active_streams += 1
        self.metrics.active.inc()
        ground_task = None
        scope = asyncio.timeout(self.limits.request_timeout_s)
        try:
            async with scope:
                queue_s = time.perf_counter() - start
                if request.ground:
                    ground_task = asyncio.create_task(self._timed_ground(request.image))
                encode_start = time.perf_counter()
                modalities, _ = await self._embed_all(request)
                encode_s = time.perf_counter() - encode_start

                text, finished, first_token_s = "", None, None
                entities = EntityStream(ground_task, self.stream_matcher, self.matcher) if ground_task else None
                generate_start = time.perf_counter()
                events = self.engine.generate(turns, modalities, sampling, request_id=request_id)
                if entities is not None and self.stream_matcher is not None:
                    events = wake_on(ground_task, events)
                async with contextlib.aclosing(events):
                    async for event in events:
                        if event is GROUNDED:
                            for entity_event in entities.on_grounded(text):
                                yield entity_event
                        elif isinstance(event, TextDelta):
                            if first_token_s is None and event.token_ids:
                                first_token_s = time.perf_counter() - start
                            if event.text or event.token_ids:
                                text += event.text
                                yield bubo_pb2.ChatEvent(delta=bubo_pb2.TextDelta(text=event.text, token_ids=event.token_ids))
                                if entities is not None:
                                    for entity_event in entities.on_text(text, event.text):
                                        yield entity_event
                        else:
                            finished = event
                generation_s = time.perf_counter() - generate_start

                grounding_wait_start = time.perf_counter()
                grounding_s = 0.0
                if entities is not None:
                    for entity_event in await entities.finish(text):
                        yield entity_event
                    grounding_s = entities.grounding_s
                self.metrics.grounding_tail.observe(time.perf_counter() - grounding_wait_start)
        except TimeoutError:
            if scope.expired():  # asyncio.timeout turns its own expiry into TimeoutError at the `async with`
                raise RequestTimeout(f"the request took longer than {self.limits.request_timeout_s:.0f} s") from None
            raise
        finally:
            if ground_task is not None:
                if ground_task.done():
                    if not ground_task.cancelled():
                        ground_task.exception()  # retrieved: the request already failed another way
                else:
                    ground_task.cancel()  # stops the wait; the Triton call itself runs on (serving/triton_client.py)
            self.active_streams -= 1
            self.metrics.active.dec()
        total_s = time.perf_counter() - start
        usage = bubo_pb2.Usage(prompt_tokens=finished.prompt_tokens, completion_tokens=finished.completion_tokens)
        timings = bubo_pb2.Timings(
            queue_ms=queue_s * 1e3, encode_ms=encode_s * 1e3, first_token_ms=(first_token_s or total_s) * 1e3,
            generation_ms=generation_s * 1e3, grounding_ms=grounding_s * 1e3, total_ms=total_s * 1e3,
        )
        self.metrics.tokens.labels("prompt").inc(finished.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(finished.completion_tokens)
        if first_token_s is not None:
            self.metrics.first_token.observe(first_token_s)
        yield bubo_pb2.ChatEvent(done=bubo_pb2.Done(finish_reason=finished.finish_reason, usage=usage, timings=timings, text=text,
                                                    entity_timings=entities.timings(text) if entities is not None else ()))
        log.info(
            "chat done", extra={"request_id": request_id, "session_id": request.session_id, "finish_reason": finished.finish_reason,
                                "prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
                                "total_ms": round(total_s * 1e3, 1)},
        )

    async def _embed_all(self, request) -> tuple[list[ModalityEmbeds], int]:
        jobs = {name: self.encoders.embed(name, data) for name, data in (("image", request.image), ("audio", request.audio)) if data}
        results = await asyncio.gather(*jobs.values())
        hits = 0
        items = []
        for name, (embeds, hit) in zip(jobs, results):
            hits += hit
            self.metrics.cache.labels(name, "hit" if hit else "miss").inc()
            items.append(ModalityEmbeds(name, embeds))
        return items, hits

    async def _timed_ground(self, image: bytes) -> tuple[GroundingResult, float]:
        start = time.perf_counter()
        result = await self.grounder.ground(image)
        return result, time.perf_counter() - start

    # -- Ground -----------------------------------------------------------------------------------

    async def Ground(self, request, context):
        try:
            async with self.answering("Ground") as call:
                return await self._ground(request, call.start)
        except Failure as failure:
            await self._abort(context, failure)

    async def _ground(self, request, start: float):
        if self.draining:
            raise ShuttingDown("the server is shutting down; send new requests to another replica")
        _check_decoded(request)
        if not request.image:
            raise InvalidArgument("image: an image is required")
        validate_media(request.image, b"", self.limits)
        if self.grounder is None:
            raise Unsupported("this server has no grounding models")
        self.triton.require()
        scope = asyncio.timeout(self.limits.request_timeout_s)
        try:
            async with scope:
                result, grounding_s = await self._timed_ground(request.image)
                entities = []
                if request.text:
                    for match in await self.matcher.amatch(request.text, [e.label for e in result.entities]):
                        entities.append(entity_message(result.entities[match.entity_index], match.phrase, match.start, match.end))
                else:
                    entities = [entity_message(e) for e in result.entities]
        except TimeoutError:
            if scope.expired():
                raise RequestTimeout(f"the request took longer than {self.limits.request_timeout_s:.0f} s") from None
            raise
        total = time.perf_counter() - start
        return bubo_pb2.GroundResponse(
            tags=result.tags, entities=entities, timings=bubo_pb2.Timings(grounding_ms=grounding_s * 1e3, total_ms=total * 1e3)
        )


SERVICE_NAME = "bubo.v1.Bubo"


@dataclass(frozen=True)
class Undecodable:
    """What arrived instead of a request message: bytes that do not parse as `message_type`."""

    message_type: str
    error: str


def _parser(message_class):
    """A request deserializer that does not raise: a DecodeError escaping it would reach the client
    as UNKNOWN, from inside grpc; the handler answers INVALID_ARGUMENT instead."""
    from google.protobuf.message import DecodeError

    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_class.DESCRIPTOR.full_name, str(exc))

    return parse


def add_bubo_service(service: BuboService, server) -> None:
    """The generated `add_BuboServicer_to_server`, with request parsing that cannot fail inside grpc."""
    handlers = {
        "Chat": grpc.unary_stream_rpc_method_handler(service.Chat, request_deserializer=_parser(bubo_pb2.ChatRequest),
                                                     response_serializer=bubo_pb2.ChatEvent.SerializeToString),
        "Ground": grpc.unary_unary_rpc_method_handler(service.Ground, request_deserializer=_parser(bubo_pb2.GroundRequest),
                                                      response_serializer=bubo_pb2.GroundResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class Health:
    """The standard gRPC health service, told the truth: "" and `bubo.v1.Bubo` are SERVING only while
    every part is up and the server is not draining; each part also has its own entry ("triton", "llm")."""

    def __init__(self, servicer, service: BuboService):
        self.servicer = servicer
        self.service = service

    def parts(self) -> dict[str, Part]:
        return {"triton": self.service.triton, "llm": self.service.llm}

    async def refresh(self) -> None:
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse
        parts = self.parts()
        serving = not self.service.draining and all(part.up for part in parts.values())
        for name in ("", SERVICE_NAME):
            await _set_health(self.servicer, name, status.SERVING if serving else status.NOT_SERVING)
        for name, part in parts.items():
            await _set_health(self.servicer, name, status.SERVING if part.up else status.NOT_SERVING)


async def start_server(
    service: BuboService,
    port: int,
    host: str = "127.0.0.1",
    max_message_bytes: int = 64 * 1024 * 1024,
    tls: tuple[bytes, bytes] | None = None,
    api_key: str | None = None,
):
    """Starts a grpc.aio server with the Bubo service, health checking and reflection.

    `tls`: (certificate chain PEM, private key PEM) serves TLS instead of plaintext. `api_key`: every
    RPC but health checks must carry `authorization: Bearer <api_key>` (UNAUTHENTICATED otherwise)."""
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from serving.auth import TokenAuth

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        interceptors=[TokenAuth(api_key, service.metrics)] if api_key else None,
    )
    add_bubo_service(service, server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if tls is not None:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    server.health = Health(health_servicer, service)
    await server.health.refresh()
    server.service = service
    server.bound_port = bound
    return server


async def _set_health(servicer, name: str, status) -> None:
    result = servicer.set(name, status)
    if asyncio.iscoroutine(result):
        await result


async def stop_server(server, grace_s: float = 30.0, hurry: asyncio.Event | None = None) -> None:
    """Graceful drain: health goes NOT_SERVING first; new Chat/Ground RPCs get UNAVAILABLE while the
    server still answers health checks; in-flight ones finish (up to `grace_s`); then it stops."""
    service = server.service
    service.draining = True
    await server.health.refresh()
    deadline = time.monotonic() + grace_s
    while service.in_flight and time.monotonic() < deadline and not (hurry and hurry.is_set()):
        await asyncio.sleep(0.05)
    if service.in_flight:
        log.warning("%d requests still in flight after the %.0f s grace period; stopping anyway", service.in_flight, grace_s)
    await server.stop(max(0.0, min(1.0, deadline - time.monotonic())))
