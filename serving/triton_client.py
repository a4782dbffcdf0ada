"""The frontend's one channel to Triton. A model call, once sent, is never cancelled.

Why: Triton 2.51 can crash (SIGSEGV in `TRITONBACKEND_ResponseSend`, python backend) when a gRPC
client cancels an in-flight call to a python-backend model or an ensemble (shared/STACK.md), and a
client that cancels, disconnects or runs out of deadline must not be able to do that. So every call
runs as a detached task to its end; the request that asked for it only *waits* for it
(`Part.guard`), and stops waiting when it is cancelled, when Triton goes down, or after `wait_s`.
The result of a call nobody waits for any more is dropped, or kept by the caller's content cache.

The wasted work is bounded: at most `max_calls` calls are in flight, and a call keeps its slot until
Triton answers it, so cancelled requests cannot queue work on Triton faster than Triton does it.
Calls carry no short gRPC deadline for the same reason (a deadline is a cancel); `call_timeout_s` is
only the backstop for a Triton that is neither answering nor restarted.
"""

from __future__ import annotations

import asyncio
import logging

from serving.errors import InvalidArgument, PartFailed, PartUnavailable
from serving.supervisor import Part

log = logging.getLogger(__name__)

# gRPC channel settings: after a Triton restart on the same port, reconnect within a second rather than
# after gRPC's default backoff (up to two minutes)
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
]
UNHEALTHY_STUB = "is not healthy"  # Triton's message for a python-backend stub that missed its health check
# what an ensemble answers for a step fed by a stub that was just restarted: an empty tensor between two of
# our models (`... input byte size mismatch for input 'PIXELS' for model 'tagger'. Expected 49152, got 0`);
# Triton's fault and transient, not the client's (our models name the request's input: `IMAGE: ...`)
EMPTY_STEP = "byte size mismatch"
STUB_RETRY_DELAYS_S = (0.25, 1.0)
TRANSIENT = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.ABORTED",
             "StatusCode.RESOURCE_EXHAUSTED"}


def triton_part() -> Part:
    return Part("triton", "Triton (encoders and grounding)")


class TritonClient:
    def __init__(self, url: str, part: Part | None = None, max_calls: int = 64, wait_s: float = 120.0,
                 call_timeout_s: float = 600.0):
        import tritonclient.grpc.aio as grpcclient

        self.grpcclient = grpcclient
        self.url = url
        self.client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self.part = part or triton_part()
        self.wait_s = wait_s
        self.call_timeout_s = call_timeout_s
        self.max_calls = max_calls
        self._slots = asyncio.Semaphore(max_calls)
        self._calls: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        """Calls Triton has not answered yet, including those nobody waits for any more."""
        return len(self._calls)

    def submit(self, model: str, inputs: list, parse, fields: dict[str, str]) -> asyncio.Task:
        """Starts a detached call of `model`; the task's result is `parse(InferResult)`. `fields` maps
        Triton input names to the request fields they came from (IMAGE -> image), for error messages."""
        self.part.require()
        task = asyncio.get_running_loop().create_task(self._call(model, inputs, parse, fields), name=f"triton-{model}")
        self._calls.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._calls.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody waited for is not an asyncio error

    async def infer(self, model: str, inputs: list, parse, fields: dict[str, str], what: str):
        return await self.part.guard(self.submit(model, inputs, parse, fields), self.wait_s, what)

    async def _call(self, model, inputs, parse, fields):
        from tritonclient.utils import InferenceServerException

        async with self._slots:
            for attempt in range(len(STUB_RETRY_DELAYS_S) + 1):
                try:
                    result = await self.client.infer(model, inputs, client_timeout=self.call_timeout_s)
                    break
                except InferenceServerException as exc:
                    # A python-backend stub that did not answer Triton's 1 s health check (a busy machine)
                    # fails the call; Triton restarts the stub, and the same call then succeeds.
                    if attempt < len(STUB_RETRY_DELAYS_S) and any(sign in (exc.message() or "") for sign in (UNHEALTHY_STUB, EMPTY_STEP)):
                        log.warning("Triton's %s: %s; retrying", model, exc.message())
                        await asyncio.sleep(STUB_RETRY_DELAYS_S[attempt])
                        continue
                    raise classify(exc, model, fields) from None
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():
                        raise  # shutting down
                    raise PartUnavailable("triton", f"the call to Triton's {model} was cut off (its channel closed)") from None
        return parse(result)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Lets the calls in flight finish (cancelling them could crash Triton), then closes the channel."""
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=timeout_s)
        await self.client.close()


def classify(exc, model: str, fields: dict[str, str]) -> Exception:
    """A Triton error as one of ours. Our python-backend models answer bad input with INVALID_ARG
    and a message that starts with the input's name (`IMAGE: image could not be decoded ...`)."""
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if status == "StatusCode.INVALID_ARGUMENT" and EMPTY_STEP in message and not any(f"{name}: " in message for name in fields):
        return PartUnavailable("triton", f"Triton could not run {model}: {message}")
    if status == "StatusCode.INVALID_ARGUMENT":
        for name, field in fields.items():
            marker = f"{name}: "
            if marker in message:
                return InvalidArgument(f"{field}: {message.split(marker, 1)[1]}")
        return InvalidArgument(f"{'/'.join(fields.values()) or model}: {message}")
    if status in TRANSIENT or any(sign in message for sign in ("failed to connect", "Socket closed", UNHEALTHY_STUB)):
        return PartUnavailable("triton", f"Triton could not run {model}: {message}")
    return PartFailed("triton", f"Triton's {model} failed: {message}")


REQUIRED_ENSEMBLES = ("image_embed", "audio_embed")


async def check_repository(client: TritonClient, num_queries: int, hidden: int, timeout_s: float = 300.0) -> tuple[str, ...]:
    """For a Triton the frontend did not start (`--triton-url`): waits until it is ready, then checks
    that it serves what this model needs: both embedding ensembles READY, each answering EMBEDS of
    [num_queries, hidden]. Returns the ensembles it serves (with `grounding` when it has that model).
    A mismatch is a SystemExit naming the model and both shapes: the frontend must not start on
    encoders of another model."""
    import time

    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await client.client.is_server_ready(client_timeout=5.0):
                break
            reason = "not ready yet"
        except InferenceServerException as exc:
            reason = exc.message() or str(exc)
        if time.monotonic() > deadline:
            raise SystemExit(f"--triton-url: {client.url} did not become ready within {timeout_s:.0f} s ({reason})")
        await asyncio.sleep(1.0)
    index = await client.client.get_model_repository_index(as_json=True, client_timeout=10.0)
    ready = {m["name"]: m.get("version", "") for m in index.get("models", []) if m.get("state") == "READY"}
    missing = [name for name in REQUIRED_ENSEMBLES if name not in ready]
    if missing:
        raise SystemExit(f"--triton-url: {client.url} does not serve {', '.join(missing)} "
                         f"(ready: {', '.join(sorted(ready)) or 'nothing'}); export this model's repository with `bubo export`")
    for name in REQUIRED_ENSEMBLES:
        config = (await client.client.get_model_config(name, as_json=True, client_timeout=10.0)).get("config", {})
        dims = next(([int(d) for d in o.get("dims", [])] for o in config.get("output", []) if o.get("name") == "EMBEDS"), None)
        if dims != [num_queries, hidden]:
            raise SystemExit(f"--triton-url: {client.url}'s {name} (version {ready[name] or '?'}) answers EMBEDS of {dims}, "
                             f"this model needs [{num_queries}, {hidden}]: the repository belongs to another model")
    served = REQUIRED_ENSEMBLES + (("grounding",) if "grounding" in ready else ())
    log.info("remote Triton %s serves %s", client.url, ", ".join(f"{n} v{ready[n]}" for n in served))
    return served
