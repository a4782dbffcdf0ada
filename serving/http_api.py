"""The OpenAI-compatible HTTP door of `bubo serve` (`--http-port`, default 8080; 0 turns it off), and the
web page.

    POST /v1/chat/completions   OpenAI Chat Completions, streaming (server-sent events) or not
    GET  /v1/models             the one model this server serves
    GET  /health                200 while every part is up, 503 otherwise (no token needed)
    GET  /                      the web page (serving/web/), its files and sample media

A request is translated into a `bubo.v1.ChatRequest` and answered by the same `BuboService` as gRPC:
the same validation, limits, embedding cache, engine, metrics and error table. OpenAI's fields map to
ours: content parts `text`, `image_url` (data URLs only: the server fetches nothing), `input_audio`
(base64 wav/mp3/flac/ogg); `max_tokens`/`max_completion_tokens`, `temperature` (OpenAI's default 1),
`top_p`, `seed`, `stop`, and vLLM's extension `min_tokens` (no end of the answer before that many tokens). System and developer messages are accepted and not used (the model's
prompt has a fixed system text, as in the paper); one image and one audio clip per conversation.

Grounding is on for requests with an image (`"bubo": {"ground": false}` in the body turns it off).
The entities come in the extension field `bubo`: each as its own chunk when it is found
(`{"bubo": {"entity": {...}}}`, empty delta), all of them in the final chunk / the response
(`{"bubo": {"entities": [...], "timings": {...}}}`; `timings.entities` says, per entity, how many ms after
its phrase it went out and whether the answer was still being written then). An entity: phrase, start, end (characters of the
answer), label, score, box [x0, y0, x1, y1] (pixels), mask (COCO RLE: size [h, w], counts string).

Errors are OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`): 400 naming the field
in OpenAI's terms, 401 without the server's token (`--api-key`, sent as `Authorization: Bearer`),
404 for another model, 413 for a body over the limit, 429 at the stream limit, 503 while a part is
down or the server drains. A failure after the stream started is sent as a last `error` event.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Literal, Union

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.proto import bubo_pb2
from serving.server import BuboService, Failure

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_BODY_BYTES = 96 << 20  # base64 of the largest image plus audio the gRPC limits allow
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")

# -- the request, as OpenAI defines it (what we use of it) ------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageURL(_Model):
    url: str
    detail: str | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Model):
    data: str
    format: Literal["wav", "mp3", "flac", "ogg"]


class AudioPart(_Model):
    type: Literal["input_audio"]
    input_audio: InputAudio


Part = Annotated[Union[TextPart, ImagePart, AudioPart], Field(discriminator="type")]


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class BuboOptions(_Model):
    ground: bool | None = None  # default: on when the conversation has an image


class ChatCompletionRequest(_Model):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int | None = Field(default=None, ge=0)  # vLLM's extension of the API
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    n: int | None = 1
    tools: list | None = None
    bubo: BuboOptions | None = None


# -- errors -----------------------------------------------------------------------------------------

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}}
    return web.json_response(body, status=status)


class HttpError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.param, self.code)


def _loc(loc) -> str:
    """pydantic's location (`('messages', 0, 'content', 'list[...]', 1, 'image_url', 'image_url', 'url')`) as
    OpenAI's field path (`messages[0].content[1].image_url.url`): union branches and tags left out."""
    out, previous = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" not in str(part) and part != "str" and part != previous:
            out += ("." if out else "") + str(part)
        previous = part
    return out


# -- OpenAI request -> bubo.v1.ChatRequest ----------------------------------------------------------


class Translation:
    """A ChatRequest built from an OpenAI request, and where each of our fields came from in it."""

    def __init__(self, body: ChatCompletionRequest):
        self.body = body
        self.fields: dict[str, str] = {}  # our field -> OpenAI's
        self.request = self._translate()
        self.request_id = ""

    def _translate(self):
        body = self.body
        if body.n not in (None, 1):
            raise HttpError(400, "n: only one choice per request is supported", "n")
        if body.tools:
            raise HttpError(400, "tools: this model does not call tools", "tools")
        turns, image, audio = [], b"", b""
        for i, message in enumerate(body.messages):
            if message.role in ("system", "developer"):
                continue  # the model's prompt has its own fixed system text
            parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) else (message.content or [])
            texts = []
            for j, part in enumerate(parts):
                where = f"messages[{i}].content[{j}]"
                if isinstance(part, TextPart):
                    texts.append(part.text)
                elif message.role != "user":
                    raise HttpError(400, f"{where}: only user messages can carry an image or audio", where)
                elif isinstance(part, ImagePart):
                    data = decode_data_url(part.image_url.url, f"{where}.image_url.url")
                    if image and data != image:
                        raise HttpError(400, f"{where}: one image per conversation (this model sees one picture)", where)
                    image, self.fields["image"] = data, f"{where}.image_url"
                else:
                    data = decode_base64(part.input_audio.data, f"{where}.input_audio.data")
                    if audio and data != audio:
                        raise HttpError(400, f"{where}: one audio clip per conversation", where)
                    audio, self.fields["audio"] = data, f"{where}.input_audio"
            self.fields[f"turns[{len(turns)}]"] = f"messages[{i}]"
            role = bubo_pb2.ROLE_USER if message.role == "user" else bubo_pb2.ROLE_ASSISTANT
            turns.append(bubo_pb2.Turn(role=role, text="\n".join(texts)))
        if not turns:
            raise HttpError(400, "messages: at least one user message is required", "messages")
        sampling = bubo_pb2.Sampling(temperature=1.0 if body.temperature is None else body.temperature,
                                     top_p=1.0 if body.top_p is None else body.top_p)
        max_tokens = body.max_completion_tokens or body.max_tokens
        self.fields["sampling.max_new_tokens"] = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        if max_tokens is not None:
            sampling.max_new_tokens = max_tokens
        if body.min_tokens:
            sampling.min_new_tokens = body.min_tokens
        if body.top_p == 0:
            raise HttpError(400, "top_p: must be in (0, 1], got 0", "top_p")
        if body.seed is not None:
            sampling.seed = body.seed
        if body.stop is not None:
            sampling.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
        self.fields.update({"sampling.temperature": "temperature", "sampling.top_p": "top_p", "sampling.seed": "seed",
                            "sampling.stop": "stop", "sampling.min_new_tokens": "min_tokens", "ground": "bubo.ground"})
        ground = body.bubo.ground if body.bubo and body.bubo.ground is not None else bool(image)
        return bubo_pb2.ChatRequest(turns=turns, image=image, audio=audio, sampling=sampling, ground=ground)

    def openai_param(self, message: str) -> tuple[str, str | None]:
        """Our error message with our field name replaced by OpenAI's, and that name."""
        match = re.match(r"^([\w.]+(?:\[\d+\])?)((?:\.\w+)?(?:\[\d+\])?)?: ", message)
        if not match:
            return message, None
        ours = match.group(1)
        for key in sorted(self.fields, key=len, reverse=True):
            if ours == key or ours.startswith(key + "[") or ours.startswith(key + "."):
                theirs = self.fields[key] + ours[len(key):]
                return theirs + message[len(ours):], theirs
        if ours == "turns":
            return "messages" + message[len(ours):], "messages"
        return message, ours


def decode_data_url(url: str, where: str) -> bytes:
    if not url.startswith("data:"):
        raise HttpError(400, f"{where}: remote URLs are not fetched; send the image itself as a data URL "
                             "(data:image/png;base64,...)", where)
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise HttpError(400, f"{where}: the data URL must be base64 (data:image/...;base64,...)", where)
    return decode_base64(payload, where)


def decode_base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{where}: not valid base64", where) from None


# -- bubo.v1 events -> OpenAI JSON -------------------------------------------------------------------


def entity_json(entity) -> dict:
    return {"index": entity.index, "phrase": entity.phrase, "start": entity.start, "end": entity.end, "label": entity.label,
            "score": round(float(entity.score), 4), "box": [entity.box.x0, entity.box.y0, entity.box.x1, entity.box.y1],
            "mask": {"size": [entity.mask.height, entity.mask.width], "counts": entity.mask.counts} if entity.mask.counts else None}


def timings_json(done) -> dict:
    """`Done.timings`, and per entity when it went out (`entities`: index, start, after_phrase_ms,
    before_answer_end: sent while more of the answer was still to come)."""
    timings = {name: round(getattr(done.timings, name), 2) for name in
               ("queue_ms", "encode_ms", "first_token_ms", "generation_ms", "grounding_ms", "total_ms")}
    timings["entities"] = [{"index": t.index, "start": t.start, "after_phrase_ms": round(t.after_phrase_ms, 2),
                            "before_answer_end": t.before_answer_end} for t in done.entity_timings]
    return timings


FINISH = {"stop": "stop", "length": "length", "abort": "stop"}


class HttpApi:
    def __init__(self, service: BuboService, model_id: str, api_key: str | None = None):
        self.service = service
        self.model_id = model_id
        self.api_key = api_key
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/", self.page)
        app.router.add_static("/static/", WEB_DIR, show_index=False)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            if request.path.startswith("/v1/"):
                self._check_token(request)
            return await handler(request)
        except HttpError as exc:
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"the request body is over the limit of {MAX_BODY_BYTES} bytes", None, "request_too_large")
        except web.HTTPNotFound:
            return error_response(404, f"{request.path}: no such endpoint", None, "not_found")
        except web.HTTPMethodNotAllowed:
            return error_response(405, f"{request.method} {request.path}: method not allowed", None, "method_not_allowed")

    def _check_token(self, request: web.Request) -> None:
        if not self.api_key:
            return
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, f"Bearer {self.api_key}".encode()):
            self.service.metrics.observe_request("HTTP " + request.path, "UNAUTHENTICATED", 0.0)
            raise HttpError(401, "missing or wrong API key: send `Authorization: Bearer <api key>`", None, "invalid_api_key")

    # -- endpoints -----------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        parts = {"triton": self.service.triton, "llm": self.service.llm}
        up = not self.service.draining and all(part.up for part in parts.values())
        body = {"status": "ok" if up else ("draining" if self.service.draining else "unavailable"),
                "parts": {name: {"up": part.up, "reason": part.reason} for name, part in parts.items()}}
        return web.json_response(body, status=200 if up else 503)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "bubogpt"}]})

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = await request.json()
        except json.JSONDecodeError as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None
        try:
            body = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            error = max(exc.errors(), key=lambda e: len(e["loc"]))  # of a union's branches, the one that got furthest
            where = _loc(error["loc"])
            raise HttpError(400, f"{where}: {error['msg']}", where) from None
        if body.model != self.model_id:
            raise HttpError(404, f"model: this server serves {self.model_id!r}, not {body.model!r}", "model", "model_not_found")
        translation = Translation(body)
        events = self._events(translation)
        try:
            first = await anext(events)  # validation and refusals happen before the first event
        except Failure as failure:
            raise self._http_error(failure, translation) from None
        except StopAsyncIteration:
            raise HttpError(500, "the answer ended before it began") from None
        if body.stream:
            return await self._stream(request, body, translation, first, events)
        return await self._complete(body, first, events, translation)

    async def _events(self, translation: Translation):
        async with self.service.answering("HTTP chat.completions") as call:
            translation.request_id = call.request_id
            async for event in self.service.chat(translation.request, call.request_id, call.start):
                yield event

    def _http_error(self, failure: Failure, translation: Translation) -> HttpError:
        message, param = translation.openai_param(failure.message) if failure.http == 400 else (failure.message, None)
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded", 503: f"{failure.part}_unavailable" if failure.part else "unavailable"}.get(failure.http)
        return HttpError(failure.http, message, param, code)

    def _chunk(self, translation: Translation, delta: dict, finish: str | None = None, **extra) -> dict:
        chunk = {"id": f"chatcmpl-{translation.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": self.model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        chunk.update(extra)
        return chunk

    async def _stream(self, request, body, translation, first, events) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(data: dict | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
            await response.write(f"data: {text}\n\n".encode())

        await send(self._chunk(translation, {"role": "assistant", "content": ""}))
        entities = []
        try:
            event = first
            while True:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    if event.delta.text:
                        await send(self._chunk(translation, {"content": event.delta.text}))
                elif kind == "entity":
                    entities.append(entity_json(event.entity))
                    await send(self._chunk(translation, {}, bubo={"entity": entities[-1]}))
                else:
                    done = event.done
                    await send(self._chunk(translation, {}, FINISH.get(done.finish_reason, "stop"),
                                           bubo={"entities": entities, "timings": timings_json(done)}))
                    if body.stream_options and body.stream_options.include_usage:
                        usage = {"prompt_tokens": done.usage.prompt_tokens, "completion_tokens": done.usage.completion_tokens,
                                 "total_tokens": done.usage.prompt_tokens + done.usage.completion_tokens}
                        chunk = self._chunk(translation, {}, usage=usage)
                        chunk["choices"] = []
                        await send(chunk)
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
        except Failure as failure:  # the answer had begun: the error goes out as the last event
            error = self._http_error(failure, translation)
            await send({"error": {"message": error.message, "type": ERROR_TYPES.get(error.status, "server_error"),
                                  "param": error.param, "code": error.code}})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def _complete(self, body, first, events, translation) -> web.Response:
        text, entities, done, event = "", [], None, first
        try:
            while True:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    text += event.delta.text
                elif kind == "entity":
                    entities.append(entity_json(event.entity))
                else:
                    done = event.done
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
        except Failure as failure:
            raise self._http_error(failure, translation) from None
        usage = {"prompt_tokens": done.usage.prompt_tokens, "completion_tokens": done.usage.completion_tokens,
                 "total_tokens": done.usage.prompt_tokens + done.usage.completion_tokens}
        return web.json_response({
            "id": f"chatcmpl-{translation.request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": FINISH.get(done.finish_reason, "stop")}],
            "usage": usage, "bubo": {"entities": entities, "timings": timings_json(done)},
        })


class HttpServer:
    """A running HTTP door: its port, and `cleanup()` to stop it."""

    def __init__(self, runner: web.AppRunner, api: HttpApi, bound_port: int):
        self.runner, self.api, self.bound_port = runner, api, bound_port

    async def cleanup(self) -> None:
        await self.runner.cleanup()


async def start_http(service: BuboService, port: int, host: str = "127.0.0.1", model_id: str = "bubogpt",
                     api_key: str | None = None, ssl_context=None) -> HttpServer:
    """Serves the HTTP API on the running event loop (port 0: any free port)."""
    api = HttpApi(service, model_id, api_key)
    # a client that goes away cancels its handler: its generation is aborted, as over gRPC
    runner = web.AppRunner(api.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return HttpServer(runner, api, site._server.sockets[0].getsockname()[1])
