"""`bubo chat`: streams an answer from a running `bubo serve` to the terminal, then lists the grounded
entities and writes the mask overlay."""

from __future__ import annotations

import collections
import json
import logging
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from serving.auth import api_key_from
from serving.proto import bubo_pb2, bubo_pb2_grpc

log = logging.getLogger(__name__)

# Clients survive the loss of a frontend: calls spread over every address given (round robin), and a call
# that fails with UNAVAILABLE before its first answer (a frontend gone or draining) is sent again, to the
# next one, by gRPC itself. A stream cut after its first answer is resumed by `chat_events` below.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "bubo.v1.Bubo"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
}
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
                   # a call is retried only while its request fits the retry buffer (256 KiB by default: less
                   # than a photo)
                   ("grpc.per_rpc_retry_buffer_size", 64 << 20),
                   # a restarted frontend is found again within a second, not after gRPC's default backoff
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]


def grpc_target(address: str) -> str:
    """`host:port` as is; `host:port,host:port,...` (several frontends) as one `ipv4:`/`ipv6:` target of
    every address the names resolve to, which gRPC's round-robin balancer spreads calls over. A gRPC
    target with a scheme (`dns:///frontend:50051`, `ipv4:...`) is passed through."""
    if "," not in address or ":/" in address or address.startswith(("ipv4:", "ipv6:", "unix:")):
        return address
    resolved: list[str] = []
    for part in address.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--server: {part.strip()!r} is not HOST:PORT")
        for family, _, _, _, sockaddr in socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM):
            item = f"[{sockaddr[0]}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{sockaddr[1]}"
            if item not in resolved:
                resolved.append(item)
    scheme = "ipv6" if resolved and all(r.startswith("[") for r in resolved) else "ipv4"
    return f"{scheme}:" + ",".join(r for r in resolved if r.startswith("[") == (scheme == "ipv6"))


@dataclass(frozen=True)
class Endpoint:
    """Where a `bubo serve` listens and how to reach it."""

    address: str = "127.0.0.1:50051"  # or several frontends: "host:port,host:port"
    tls: bool = False  # TLS, trusting the system's roots (or `tls_ca`)
    tls_ca: str | None = None  # PEM file of the CA that signed the server's certificate (implies TLS)
    api_key: str | None = None  # the server's token; default: $BUBO_API_KEY

    def channel(self) -> grpc.Channel:
        if self.tls or self.tls_ca:
            roots = Path(self.tls_ca).read_bytes() if self.tls_ca else None
            options = list(CHANNEL_OPTIONS)
            if "," in self.address:  # one target of addresses: the certificate is checked against the first host's name
                options.append(("grpc.ssl_target_name_override", self.address.split(",")[0].rpartition(":")[0].strip("[] ")))
            channel = grpc.secure_channel(grpc_target(self.address), grpc.ssl_channel_credentials(root_certificates=roots),
                                          options)
        else:
            channel = grpc.insecure_channel(grpc_target(self.address), CHANNEL_OPTIONS)
        key = api_key_from(self.api_key)
        return grpc.intercept_channel(channel, _Bearer(key)) if key else channel


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call (plaintext channels cannot carry call credentials)."""

    def __init__(self, key: str):
        self.header = ("authorization", f"Bearer {key}")

    def _details(self, details):
        metadata = list(details.metadata or ()) + [self.header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


def as_endpoint(server: "str | Endpoint") -> Endpoint:
    return server if isinstance(server, Endpoint) else Endpoint(server)


@dataclass
class ChatResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    entities: list = field(default_factory=list)
    done: object = None


def chat_request(text: str, image: bytes = b"", audio: bytes = b"", history: list[tuple[str, str]] = (),
                 ground: bool = False, max_new_tokens: int = 0, temperature: float = 0.0, seed: int | None = None,
                 min_new_tokens: int = 0):
    turns = []
    for user, assistant in history:
        turns += [bubo_pb2.Turn(role=bubo_pb2.ROLE_USER, text=user), bubo_pb2.Turn(role=bubo_pb2.ROLE_ASSISTANT, text=assistant)]
    turns.append(bubo_pb2.Turn(role=bubo_pb2.ROLE_USER, text=text))
    sampling = bubo_pb2.Sampling(temperature=temperature, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    if seed is not None:
        sampling.seed = seed
    return bubo_pb2.ChatRequest(turns=turns, image=image, audio=audio, sampling=sampling, ground=ground)


RESUMABLE = (grpc.StatusCode.UNAVAILABLE,)


class ResumeMismatch(RuntimeError):
    """A resumed stream did not repeat what the cut one had delivered."""


def chat_events(stub, request, timeout: float | None = None, max_resumes: int = 3):
    """The events of one Chat, surviving the loss of the frontend that serves it.

    A stream cut with UNAVAILABLE after it began (its frontend was killed, its LLM server died) is
    asked again, of any frontend; a greedy answer (temperature 0) is the same token for token, so
    what was already delivered is skipped and the caller sees one stream, without repeats. If the
    new stream does not start with what was delivered, the call fails (nothing is made up). Sampled
    answers (temperature > 0 without a seed) cannot be resumed: their error is raised."""
    delivered_text, delivered_ids, entities = "", [], set()
    deterministic = request.sampling.temperature == 0 or request.sampling.HasField("seed")
    resumes = 0
    while True:
        skip_text, skip_ids = delivered_text, list(delivered_ids)
        try:
            for event in stub.Chat(request, timeout=timeout):
                kind = event.WhichOneof("event")
                if kind == "delta":
                    text, ids = event.delta.text, list(event.delta.token_ids)
                    if skip_text or skip_ids:  # the part of the answer the caller has already
                        n, m = min(len(text), len(skip_text)), min(len(ids), len(skip_ids))
                        if text[:n] != skip_text[:n] or ids[:m] != skip_ids[:m]:
                            raise ResumeMismatch("the resumed answer differs from the one delivered before the stream was cut")
                        text, ids, skip_text, skip_ids = text[n:], ids[m:], skip_text[n:], skip_ids[m:]
                        if not (text or ids):
                            continue
                        event = bubo_pb2.ChatEvent(delta=bubo_pb2.TextDelta(text=text, token_ids=ids))
                    delivered_text += text
                    delivered_ids += ids
                elif kind == "entity":
                    key = (event.entity.start, event.entity.end, event.entity.index)
                    if key in entities:
                        continue
                    entities.add(key)
                elif kind == "done":
                    if skip_text or skip_ids:
                        raise ResumeMismatch("the resumed answer is shorter than the one delivered before the stream was cut")
                    yield event
                    return  # a cut after Done (before the trailing status) is not a reason to answer again
                yield event
            return
        except grpc.RpcError as exc:
            began = bool(delivered_text or delivered_ids or entities)
            if exc.code() not in RESUMABLE or not began or not deterministic or resumes >= max_resumes:
                raise
            resumes += 1
            log.warning("the answer's stream was cut (%s: %s); resuming it (%d of %d)", exc.code().name, exc.details(),
                        resumes, max_resumes)


def collect(events, on_delta=None, on_entity=None) -> ChatResult:
    result = ChatResult()
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "delta":
            result.text += event.delta.text
            result.token_ids += list(event.delta.token_ids)
            if on_delta:
                on_delta(event.delta.text)
        elif kind == "entity":
            result.entities.append(event.entity)
            if on_entity:
                on_entity(event.entity, len(result.entities))
        else:
            result.done = event.done
    return result


def entity_marker(write):
    """`bubo chat` marks each entity in the streamed text when it arrives: `[n]` (its row in the table
    printed after the answer), in the terminal's colour for it when stdout is a terminal."""
    colours = ("31", "32", "34", "33", "35", "36")

    def mark(entity, n: int) -> None:
        if sys.stdout.isatty():
            write(f"\033[{colours[(n - 1) % len(colours)]}m[{n}]\033[0m")
        else:
            write(f"[{n}]")

    return mark


def main_chat(server: str | Endpoint, text: str, image: str | None, audio: str | None, out: str | None, ground: bool | None,
              max_new_tokens: int, temperature: float) -> int:
    from rich.console import Console
    from rich.table import Table

    image_bytes = Path(image).read_bytes() if image else b""
    audio_bytes = Path(audio).read_bytes() if audio else b""
    ground = bool(image_bytes) if ground is None else ground
    request = chat_request(text, image_bytes, audio_bytes, ground=ground, max_new_tokens=max_new_tokens, temperature=temperature)
    with as_endpoint(server).channel() as channel:
        stub = bubo_pb2_grpc.BuboStub(channel)
        write = lambda t: (sys.stdout.write(t), sys.stdout.flush())  # noqa: E731
        try:
            try:
                result = collect(chat_events(stub, request), on_delta=write, on_entity=entity_marker(write))
            except grpc.RpcError as exc:
                if not (exc.code() == grpc.StatusCode.FAILED_PRECONDITION and exc.details().startswith("ground:")):
                    raise
                print(f"(grounding unavailable: {exc.details()}; answering without it)", file=sys.stderr)
                request.ground = False
                result = collect(chat_events(stub, request), on_delta=write)
        except grpc.RpcError as exc:
            print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except ResumeMismatch as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # leaving the channel cancels the call; the server aborts the generation
            print("\n(cancelled)", file=sys.stderr)
            return 130
    print()
    console = Console(stderr=True)
    done = result.done
    console.print(f"[{done.finish_reason}; {done.usage.prompt_tokens} prompt + {done.usage.completion_tokens} generated tokens; "
                  f"first token {done.timings.first_token_ms:.0f} ms, total {done.timings.total_ms:.0f} ms]", markup=False)
    if result.entities:
        table = Table(title="grounded entities ([n] in the answer where each arrived)")
        for column in ("n", "phrase", "characters", "label", "score", "box (x0, y0, x1, y1)", "entity"):
            table.add_column(column)
        for n, e in enumerate(result.entities, 1):
            table.add_row(str(n), e.phrase, f"{e.start}-{e.end}", e.label, f"{e.score:.2f}",
                          f"{e.box.x0:.0f}, {e.box.y0:.0f}, {e.box.x1:.0f}, {e.box.y1:.0f}", str(e.index))
        console.print(table)
    elif ground and image_bytes:
        console.print("no object of the answer was grounded in the image", markup=False)
    if out and image_bytes:
        save_entity_overlay(image_bytes, result.entities, out)
        console.print(f"overlay written to {out}", markup=False)
    return 0


def interactive_chat(server: str | Endpoint, image: str | None, audio: str | None, out: str | None, ground: bool | None,
                     max_new_tokens: int, temperature: float, lines=None) -> int:
    """A conversation on the terminal: each line is a question, the answers stream in, the history and
    the attached image/audio carry over (the server's embedding cache makes later turns cheap)."""
    image_bytes = Path(image).read_bytes() if image else b""
    audio_bytes = Path(audio).read_bytes() if audio else b""
    ground = bool(image_bytes) if ground is None else ground
    history: list[tuple[str, str]] = []
    lines = lines if lines is not None else _stdin_lines()
    write = lambda t: (sys.stdout.write(t), sys.stdout.flush())  # noqa: E731
    with as_endpoint(server).channel() as channel:
        stub = bubo_pb2_grpc.BuboStub(channel)
        for turn, text in enumerate(lines):
            text = text.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            request = chat_request(text, image_bytes, audio_bytes, history=history, ground=ground,
                                   max_new_tokens=max_new_tokens, temperature=temperature)
            write("assistant: ")
            try:
                result = collect(chat_events(stub, request), on_delta=write, on_entity=entity_marker(write))
            except KeyboardInterrupt:
                print("\n(cancelled)", file=sys.stderr)
                continue
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and exc.details().startswith("ground:"):
                    ground = request.ground = False
                    result = collect(chat_events(stub, request), on_delta=write)
                else:
                    print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
                    continue
            except ResumeMismatch as exc:
                print(f"\nerror: {exc}", file=sys.stderr)
                continue
            write("\n")
            for e in result.entities:
                print(f"  [{e.index}] {e.phrase!r} -> {e.label} ({e.score:.2f}) box {e.box.x0:.0f},{e.box.y0:.0f},{e.box.x1:.0f},{e.box.y1:.0f}")
            if out and image_bytes and result.entities:
                save_entity_overlay(image_bytes, result.entities, out)
            history.append((text, result.text.strip()))
    return 0


def _stdin_lines():
    while True:
        try:
            yield input("you: ")
        except EOFError:
            return


def save_entity_overlay(image_bytes: bytes, entities, out: str) -> None:
    from bubogpt.grounding.overlay import save_overlay
    from bubogpt.grounding.schema import GroundedEntity
    from bubogpt.image import decode_image

    grounded = [
        GroundedEntity(index=e.index, label=e.label, score=e.score, box_xyxy=(e.box.x0, e.box.y0, e.box.x1, e.box.y1),
                       mask={"size": [e.mask.height, e.mask.width], "counts": e.mask.counts} if e.mask.counts else None)
        for e in entities
    ]
    save_overlay(decode_image(image_bytes), grounded, out)
