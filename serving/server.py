"""The gRPC frontend (`bubo.v1.Bubo`): validates, encodes through Triton, streams from the LLM engine,
grounds the answer.

Per Chat request:
  1. validate every field (INVALID_ARGUMENT naming the field) and take a stream slot
     (RESOURCE_EXHAUSTED when all are taken);
  2. grounding of the image starts at once, in the background;
  3. image/audio embeddings from the Triton ensembles (content-hash cache), concurrently;
  4. token deltas streamed from the LLM engine as they come;
  5. when the answer is complete: entity matching, one event per grounded entity;
  6. a Done event with the finish reason, token counts and timings.
A client that cancels or disconnects aborts its generation and its grounding.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import grpc

from bubogpt.grounding.matching import EntityMatcher, RuleEntityMatcher
from bubogpt.grounding.pipeline import GroundingResult
from bubogpt.grounding.schema import GroundedEntity
from bubogpt.prompt import Turn
from serving.encoders import EncoderUnavailable, InputError, TritonEncoders
from serving.llm_engine import EngineBase, EngineRequestError, EngineUnavailable, ModalityEmbeds, SamplingOptions, TextDelta
from serving.metrics import ServerMetrics
from serving.proto import bubo_pb2, bubo_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_audio_bytes: int = 50 * 1024 * 1024
    max_turns: int = 64
    max_turn_chars: int = 16_000
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 256
    max_concurrent_streams: int = 64
    request_timeout_s: float = 300.0


class Grounder(Protocol):
    async def ground(self, image: bytes) -> GroundingResult: ...


class RequestError(ValueError):
    pass


ROLES = {bubo_pb2.ROLE_USER: "user", bubo_pb2.ROLE_ASSISTANT: "assistant"}


def validate_chat(request, limits: Limits) -> tuple[list[Turn], SamplingOptions]:
    if not request.turns:
        raise RequestError("turns: at least one user turn is required")
    if len(request.turns) > limits.max_turns:
        raise RequestError(f"turns: {len(request.turns)} turns, the limit is {limits.max_turns}")
    turns = []
    for i, turn in enumerate(request.turns):
        if turn.role not in ROLES:
            raise RequestError(f"turns[{i}].role: must be ROLE_USER or ROLE_ASSISTANT")
        if len(turn.text) > limits.max_turn_chars:
            raise RequestError(f"turns[{i}].text: {len(turn.text)} characters, the limit is {limits.max_turn_chars}")
        # an empty first question is fine when an image or audio is attached ("tell me about it")
        if not turn.text.strip() and not (i == 0 and (request.image or request.audio)):
            raise RequestError(f"turns[{i}].text: empty")
        turns.append(Turn(ROLES[turn.role], turn.text))
    if len(request.image) > limits.max_image_bytes:
        raise RequestError(f"image: {len(request.image)} bytes, the limit is {limits.max_image_bytes}")
    if len(request.audio) > limits.max_audio_bytes:
        raise RequestError(f"audio: {len(request.audio)} bytes, the limit is {limits.max_audio_bytes}")
    if request.ground and not request.image:
        raise RequestError("ground: grounding needs an image")
    sampling = request.sampling
    max_new = sampling.max_new_tokens or limits.default_max_new_tokens
    if max_new > limits.max_new_tokens:
        raise RequestError(f"sampling.max_new_tokens: {max_new}, the limit is {limits.max_new_tokens}")
    options = SamplingOptions(
        temperature=sampling.temperature,
        top_p=sampling.top_p or 1.0,
        max_new_tokens=max_new,
        seed=sampling.seed if sampling.HasField("seed") else None,
    )
    try:
        options.validate()
    except EngineRequestError as exc:
        raise RequestError(str(exc)) from None
    return turns, options


def entity_message(entity: GroundedEntity, phrase: str = "", start: int = 0, end: int = 0):
    rle = entity.mask_rle() if entity.mask is not None else None
    mask = bubo_pb2.Mask(height=rle["size"][0], width=rle["size"][1], counts=rle["counts"]) if rle else None
    x0, y0, x1, y1 = entity.box_xyxy
    return bubo_pb2.Entity(
        index=entity.index, phrase=phrase, start=start, end=end, label=entity.label, score=float(entity.score),
        box=bubo_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1), mask=mask,
    )


class BuboService(bubo_pb2_grpc.BuboServicer):
    def __init__(
        self,
        encoders: TritonEncoders,
        engine: EngineBase,
        grounder: Grounder | None = None,
        matcher: EntityMatcher | None = None,
        limits: Limits = Limits(),
        metrics: ServerMetrics | None = None,
    ):
        self.encoders = encoders
        self.engine = engine
        self.grounder = grounder
        self.matcher = matcher or RuleEntityMatcher()
        self.limits = limits
        self.metrics = metrics or ServerMetrics()
        self.active_streams = 0

    # -- helpers ---------------------------------------------------------------------------------

    async def _fail(self, context, method: str, code: grpc.StatusCode, message: str, start: float):
        self.metrics.observe_request(method, code.name, time.perf_counter() - start)
        await context.abort(code, message)

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

    # -- Chat -------------------------------------------------------------------------------------

    async def Chat(self, request, context):
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        try:
            turns, sampling = validate_chat(request, self.limits)
        except RequestError as exc:
            await self._fail(context, "Chat", grpc.StatusCode.INVALID_ARGUMENT, str(exc), start)
            return
        if self.active_streams >= self.limits.max_concurrent_streams:
            await self._fail(context, "Chat", grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"the server is at its limit of {self.limits.max_concurrent_streams} concurrent streams; retry later", start)
            return
        self.active_streams += 1
        self.metrics.active.inc()
        ground_task = None
        code = grpc.StatusCode.OK
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                queue_s = time.perf_counter() - start
                if request.ground:
                    if self.grounder is None:
                        code = grpc.StatusCode.FAILED_PRECONDITION
                        await context.abort(code, "ground: this server has no grounding models")
                    ground_task = asyncio.create_task(self._timed_ground(request.image))
                encode_start = time.perf_counter()
                try:
                    modalities, _ = await self._embed_all(request)
                except InputError as exc:
                    code = grpc.StatusCode.INVALID_ARGUMENT
                    await context.abort(code, str(exc))
                except EncoderUnavailable as exc:
                    code = grpc.StatusCode.UNAVAILABLE
                    await context.abort(code, str(exc))
                encode_s = time.perf_counter() - encode_start

                text, finished, first_token_s = "", None, None
                generate_start = time.perf_counter()
                try:
                    async for event in self.engine.generate(turns, modalities, sampling, request_id=request_id):
                        if isinstance(event, TextDelta):
                            if first_token_s is None and event.token_ids:
                                first_token_s = time.perf_counter() - start
                            if event.text or event.token_ids:
                                text += event.text
                                yield bubo_pb2.ChatEvent(delta=bubo_pb2.TextDelta(text=event.text, token_ids=event.token_ids))
                        else:
                            finished = event
                except EngineRequestError as exc:
                    code = grpc.StatusCode.INVALID_ARGUMENT
                    await context.abort(code, str(exc))
                except EngineUnavailable as exc:
                    code = grpc.StatusCode.UNAVAILABLE
                    await context.abort(code, str(exc))
                generation_s = time.perf_counter() - generate_start

                grounding_wait_start = time.perf_counter()
                grounding_s = 0.0
                if ground_task is not None:
                    try:
                        result, grounding_s = await ground_task
                    except InputError as exc:
                        code = grpc.StatusCode.INVALID_ARGUMENT
                        await context.abort(code, str(exc))
                    matches = await self.matcher.amatch(text, [e.label for e in result.entities])
                    for match in matches:
                        entity = result.entities[match.entity_index]
                        yield bubo_pb2.ChatEvent(entity=entity_message(entity, match.phrase, match.start, match.end))
                self.metrics.grounding_tail.observe(time.perf_counter() - grounding_wait_start)
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
                yield bubo_pb2.ChatEvent(done=bubo_pb2.Done(finish_reason=finished.finish_reason, usage=usage, timings=timings, text=text))
                log.info(
                    "chat done", extra={"request_id": request_id, "session_id": request.session_id, "finish_reason": finished.finish_reason,
                                        "prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
                                        "total_ms": round(total_s * 1e3, 1)},
                )
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await context.abort(code, f"the request took longer than {self.limits.request_timeout_s:.0f} s")
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            log.info("chat cancelled by the client", extra={"request_id": request_id})
            raise
        finally:
            if ground_task is not None and not ground_task.done():
                ground_task.cancel()
            self.active_streams -= 1
            self.metrics.active.dec()
            self.metrics.observe_request("Chat", code.name, time.perf_counter() - start)

    async def _timed_ground(self, image: bytes) -> tuple[GroundingResult, float]:
        start = time.perf_counter()
        result = await self.grounder.ground(image)
        return result, time.perf_counter() - start

    # -- Ground -----------------------------------------------------------------------------------

    async def Ground(self, request, context):
        start = time.perf_counter()
        if not request.image:
            await self._fail(context, "Ground", grpc.StatusCode.INVALID_ARGUMENT, "image: an image is required", start)
        if len(request.image) > self.limits.max_image_bytes:
            await self._fail(context, "Ground", grpc.StatusCode.INVALID_ARGUMENT,
                             f"image: {len(request.image)} bytes, the limit is {self.limits.max_image_bytes}", start)
        if self.grounder is None:
            await self._fail(context, "Ground", grpc.StatusCode.FAILED_PRECONDITION, "this server has no grounding models", start)
        try:
            result, grounding_s = await self._timed_ground(request.image)
        except InputError as exc:
            await self._fail(context, "Ground", grpc.StatusCode.INVALID_ARGUMENT, str(exc), start)
        entities = []
        if request.text:
            for match in await self.matcher.amatch(request.text, [e.label for e in result.entities]):
                entities.append(entity_message(result.entities[match.entity_index], match.phrase, match.start, match.end))
        else:
            entities = [entity_message(e) for e in result.entities]
        total = time.perf_counter() - start
        self.metrics.observe_request("Ground", "OK", total)
        return bubo_pb2.GroundResponse(
            tags=result.tags, entities=entities, timings=bubo_pb2.Timings(grounding_ms=grounding_s * 1e3, total_ms=total * 1e3)
        )


async def start_server(
    service: BuboService,
    port: int,
    host: str = "127.0.0.1",
    max_message_bytes: int = 64 * 1024 * 1024,
):
    """Starts a grpc.aio server with the Bubo service, health checking and reflection."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    bubo_pb2_grpc.add_BuboServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = bubo_pb2.DESCRIPTOR.services_by_name["Bubo"].full_name
    reflection.enable_server_reflection((service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    await server.start()
    for name in ("", service_name):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.SERVING)
    server.health_servicer = health_servicer  # for graceful shutdown
    server.bound_port = bound
    return server


async def _set_health(servicer, name: str, status) -> None:
    result = servicer.set(name, status)
    if asyncio.iscoroutine(result):
        await result


async def stop_server(server, grace_s: float = 30.0) -> None:
    """Graceful shutdown: report NOT_SERVING, refuse new RPCs, let in-flight streams finish."""
    from grpc_health.v1 import health_pb2

    servicer = getattr(server, "health_servicer", None)
    if servicer is not None:
        for name in ("", bubo_pb2.DESCRIPTOR.services_by_name["Bubo"].full_name):
            await _set_health(servicer, name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace_s)
