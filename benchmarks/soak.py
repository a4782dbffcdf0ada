"""`bubo bench --suite soak`: the real stack under mixed load, with faults on a fixed, seeded schedule.

    bubo bench --suite soak                          # 1000 requests at c=16 (benchmarks/results/soak-*/)
    bubo bench --suite soak --soak-requests 200      # the short version the test suite runs

The server is `bubo serve` in a child process, started as a user starts it (benchmarks/serve_process.py).
Requests (cycled, seeded): image, audio, image+audio, multi-turn about a picture, grounded chat, text
only, and the Ground RPC, on pictures and sounds of the synthetic world the default model knows.
Faults, drawn per request from the seed: client cancels (10 %, after 0-6 events or a random delay,
so they land during encoding, grounding, generation and matching), short client deadlines (5 %) and
bad payloads (5 %: truncated and corrupt images and audio, oversize, empty, unknown role, bad
sampling values). Faults of the parts, at fixed points of the schedule: SIGKILL of tritonserver,
SIGKILL of vLLM's engine core, SIGSTOP of tritonserver for 10 s and SIGCONT.

A client that gets UNAVAILABLE waits, as a client behind a load balancer would, until the health
entry of the part named in the trailing metadata (`bubo-part`) says SERVING again. A monitor asks
the health service five times a second, which also shows whether the frontend keeps answering
while a part restarts.

Accounting: every request ends with a status; the status must be the one its fault calls for:
cancel -> CANCELLED (or OK if it finished first), short deadline -> DEADLINE_EXCEEDED (or OK), bad
payload -> INVALID_ARGUMENT with a message that starts with the field, no fault -> OK. UNAVAILABLE
is allowed only for a request that needs a part (Triton for media and grounding, the LLM for Chat)
and overlapped that part's outage (kill -> health SERVING again). Never UNKNOWN, never a request
that outlives its deadline. An OK answer must equal the answer the same request got before any
fault (greedy tokens, and the grounded entities). RSS and open file descriptors of the whole process
tree are read after warm-up and at the end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

KINDS = ("image", "audio", "image+audio", "multi-turn", "grounded", "text", "ground-rpc")
QUESTIONS = ("What objects are in the image?", "Describe the picture.", "What do you hear?",
             "What do you see and hear?", "Where are the objects?", "Tell me about it.")
PART_WORDS = {"triton": "Triton", "llm": "LLM engine"}  # how an UNAVAILABLE message names the part
BAD_KINDS = ("truncated image", "corrupt image", "truncated audio", "corrupt audio", "oversize image",
             "empty image", "empty text", "unknown role", "bad temperature", "nan top_p", "huge max_new_tokens",
             "ground without image")
# the field each bad payload's message must start with
BAD_FIELDS = {"truncated image": "image:", "corrupt image": "image:", "truncated audio": "audio:",
              "corrupt audio": "audio:", "oversize image": "image:", "empty image": "image:",
              "empty text": "turns[0].text:", "unknown role": "turns[0].role:", "bad temperature": "sampling.temperature:",
              "nan top_p": "sampling.top_p:", "huge max_new_tokens": "sampling.max_new_tokens:",
              "ground without image": "ground:"}


@dataclass
class SoakSettings:
    requests: int = 1000
    concurrency: int = 16
    seed: int = 0
    cancel_fraction: float = 0.10
    deadline_fraction: float = 0.05
    bad_fraction: float = 0.05
    kill_triton_at: float | None = 0.25  # fraction of the schedule sent when the fault fires; None: no fault
    kill_llm_at: float | None = 0.5
    stop_triton_at: float | None = 0.75
    stop_triton_s: float = 10.0
    client_deadline_s: float = 90.0  # for requests without a short-deadline fault
    max_new_tokens: int = 24
    images: int = 12  # distinct pictures and sounds in the pool (later requests reuse them: cache hits)
    sounds: int = 8
    fresh_fraction: float = 0.5  # requests whose media are new (cache misses: Triton works on them)

    @classmethod
    def short(cls) -> "SoakSettings":
        """The test suite's soak: 200 requests, both kills, no SIGSTOP (its own test covers it)."""
        return cls(requests=200, stop_triton_at=None, images=8, sounds=6)


@dataclass
class Planned:
    index: int
    kind: str
    method: str  # "Chat" or "Ground"
    message: object  # the request proto
    fault: str = "none"  # none | cancel | deadline | bad
    cancel_after_events: int | None = None
    cancel_after_s: float | None = None
    deadline_s: float | None = None
    bad_kind: str | None = None
    content: tuple | None = None  # identifies the answer an OK request must repeat

    @property
    def needs(self) -> frozenset[str]:
        parts = set()
        if self.method == "Chat":
            parts.add("llm")
        m = self.message
        if self.method == "Ground" or m.image or m.audio or getattr(m, "ground", False):
            parts.add("triton")
        return frozenset(parts)


@dataclass
class Outcome:
    index: int
    status: str
    details: str = ""
    start_s: float = 0.0
    end_s: float = 0.0
    events: int = 0
    token_ids: list[int] = field(default_factory=list)
    entities: list[tuple] = field(default_factory=list)
    part: str = ""


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


def media_pool(settings: SoakSettings) -> tuple[list[bytes], list[bytes]]:
    from training.world import derive_seed
    from training.world.scene import make_scene
    from training.world.sound import make_sound

    images = [make_scene(derive_seed("soak", "image", i)).jpeg() for i in range(settings.images)]
    sounds = [make_sound(derive_seed("soak", "sound", i)).wav() for i in range(settings.sounds)]
    return images, sounds


def _chat(text, image=b"", audio=b"", history=(), ground=False, max_new_tokens=24, **sampling):
    from serving.client import chat_request

    request = chat_request(text, image, audio, history=list(history), ground=ground, max_new_tokens=max_new_tokens)
    for key, value in sampling.items():
        setattr(request.sampling, key, value)
    return request


def bad_request(kind: str, rng: random.Random, images: list[bytes], sounds: list[bytes], max_new_tokens: int):
    from serving.proto import bubo_pb2
    from serving.server import Limits

    image, sound = images[rng.randrange(len(images))], sounds[rng.randrange(len(sounds))]
    question = QUESTIONS[rng.randrange(len(QUESTIONS))]
    if kind == "truncated image":
        return _chat(question, image[: len(image) // 3], max_new_tokens=max_new_tokens)
    if kind == "corrupt image":
        return _chat(question, b"\x89PNG\r\n\x1a\n" + rng.randbytes(2000), max_new_tokens=max_new_tokens)
    if kind == "truncated audio":
        return _chat(question, audio=sound[:44], max_new_tokens=max_new_tokens)
    if kind == "corrupt audio":
        return _chat(question, audio=b"RIFF\x00\x10\x00\x00WAVEfmt " + rng.randbytes(3000), max_new_tokens=max_new_tokens)
    if kind == "oversize image":
        return _chat(question, b"\xff\xd8" + b"\x00" * Limits().max_image_bytes, max_new_tokens=max_new_tokens)
    if kind == "empty image":
        return bubo_pb2.GroundRequest(image=b"")
    if kind == "empty text":
        return _chat("   ", max_new_tokens=max_new_tokens)
    if kind == "unknown role":
        return bubo_pb2.ChatRequest(turns=[bubo_pb2.Turn(role=7, text=question)])
    if kind == "bad temperature":
        return _chat(question, max_new_tokens=max_new_tokens, temperature=-1.0)
    if kind == "nan top_p":
        return _chat(question, max_new_tokens=max_new_tokens, top_p=math.nan)
    if kind == "huge max_new_tokens":
        return _chat(question, max_new_tokens=2**31)
    if kind == "ground without image":
        return _chat(question, audio=sound, ground=True, max_new_tokens=max_new_tokens)
    raise ValueError(kind)


class _FreshMedia:
    """A picture or a sound of its own for request `index` (seeded by the index)."""

    def __call__(self, kind: str, index: int) -> bytes:
        from training.world import derive_seed
        from training.world.scene import make_scene
        from training.world.sound import make_sound

        seed = derive_seed("soak-fresh", kind, index)
        return make_scene(seed).jpeg() if kind == "image" else make_sound(seed).wav()


def build_plan(settings: SoakSettings, images: list[bytes], sounds: list[bytes]) -> list[Planned]:
    """The schedule: identical for identical settings."""
    from serving.proto import bubo_pb2

    rng = random.Random(settings.seed)
    plan = []
    n = settings.max_new_tokens
    fresh_media = _FreshMedia()
    for index in range(settings.requests):
        kind = KINDS[index % len(KINDS)]
        i, s, q = rng.randrange(len(images)), rng.randrange(len(sounds)), rng.randrange(len(QUESTIONS))
        question = QUESTIONS[q]
        method = "Chat"
        # half the requests bring media nobody sent before: the encoders and grounding really run on them
        # (there is no fault-free answer to compare those with); the rest repeat the pool (cache hits)
        fresh = rng.random() < settings.fresh_fraction
        image = (lambda: fresh_media("image", index)) if fresh else (lambda: images[i])
        sound = (lambda: fresh_media("sound", index)) if fresh else (lambda: sounds[s])
        if kind == "image":
            message, content = _chat(question, image(), max_new_tokens=n), (kind, i, q)
        elif kind == "audio":
            message, content = _chat(question, audio=sound(), max_new_tokens=n), (kind, s, q)
        elif kind == "image+audio":
            message, content = _chat(question, image(), sound(), max_new_tokens=n), (kind, i, s, q)
        elif kind == "multi-turn":
            history = [("Describe the picture.", "I see a few things."), ("What else?", "Nothing more.")]
            message, content = _chat(question, image(), history=history, max_new_tokens=n), (kind, i, q)
        elif kind == "grounded":
            message, content = _chat("What objects are in the image?", image(), ground=True, max_new_tokens=n), (kind, i)
        elif kind == "text":
            message, content = _chat(f"Say something about number {q}.", max_new_tokens=n), (kind, q)
        else:
            method, message, content = "Ground", bubo_pb2.GroundRequest(image=image()), (kind, i)
        item = Planned(index, kind, method, message, content=None if fresh else content)
        draw = rng.random()
        if draw < settings.cancel_fraction:
            item.fault, item.content = "cancel", None
            if rng.random() < 0.5:
                item.cancel_after_events = rng.randrange(0, 7)
            else:
                item.cancel_after_s = rng.uniform(0.0, 0.6)
        elif draw < settings.cancel_fraction + settings.deadline_fraction:
            item.fault, item.content, item.deadline_s = "deadline", None, rng.uniform(0.02, 0.5)
        elif draw < settings.cancel_fraction + settings.deadline_fraction + settings.bad_fraction:
            bad = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
            message = bad_request(bad, rng, images, sounds, n)
            method = "Ground" if isinstance(message, bubo_pb2.GroundRequest) else "Chat"
            item = Planned(index, f"bad: {bad}", method, message, fault="bad", bad_kind=bad)
        plan.append(item)
    return plan


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------


def _entity_tuple(e) -> tuple:
    return (e.phrase, e.start, e.end, e.label, e.index, round(e.box.x0, 1), round(e.box.y0, 1), e.mask.counts)


async def run_one(stub, item: Planned, clock) -> Outcome:
    outcome = Outcome(item.index, "OK", start_s=clock())
    timeout = item.deadline_s if item.fault == "deadline" else None
    try:
        if item.method == "Ground":
            call = stub.Ground(item.message, timeout=timeout or 90.0)
            if item.fault == "cancel":
                await asyncio.sleep(item.cancel_after_s or 0.0)
                call.cancel()
            response = await call
            outcome.entities = [_entity_tuple(e) for e in response.entities]
        else:
            call = stub.Chat(item.message, timeout=timeout or 90.0)
            if item.fault == "cancel" and item.cancel_after_s is not None:
                asyncio.get_running_loop().call_later(item.cancel_after_s, call.cancel)
            if item.fault == "cancel" and item.cancel_after_events == 0:
                call.cancel()
            done = False
            async for event in call:
                outcome.events += 1
                kind = event.WhichOneof("event")
                if kind == "delta":
                    outcome.token_ids += list(event.delta.token_ids)
                elif kind == "entity":
                    outcome.entities.append(_entity_tuple(event.entity))
                else:
                    done = True
                if item.fault == "cancel" and item.cancel_after_events == outcome.events:
                    call.cancel()
            if not done and outcome.status == "OK":
                outcome.status, outcome.details = "NO_DONE_EVENT", "the stream ended without a Done event"
    except grpc.aio.AioRpcError as exc:
        outcome.status, outcome.details = exc.code().name, exc.details() or ""
        trailing = dict(exc.trailing_metadata() or ())
        outcome.part = trailing.get("bubo-part", "")
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():
            raise
        outcome.status = "CANCELLED"
    outcome.end_s = clock()
    return outcome


@dataclass
class FaultRecord:
    name: str
    part: str
    at_s: float
    end_s: float  # when the fault itself ended (SIGCONT); = at_s for kills
    pid: int | None = None
    ended: bool = False  # the fault itself is over (at once for a kill; SIGCONT for a stop)
    detected_s: float | None = None  # first non-SERVING health after the fault
    recovered_s: float | None = None  # first SERVING health after that


class Soak:
    def __init__(self, server, settings: SoakSettings):
        self.server = server
        self.settings = settings
        self.t0 = time.monotonic()
        self.health: list[tuple[float, str, float]] = []  # (t, status of "", answer latency)
        self.part_samples: dict[str, list[tuple[float, bool]]] = {"triton": [], "llm": []}  # (t, serving)
        self.faults: list[FaultRecord] = []
        self.outcomes: list[Outcome] = []

    def clock(self) -> float:
        return time.monotonic() - self.t0

    async def monitor(self, stop: asyncio.Event, channel) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            start = self.clock()
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.aio.AioRpcError as exc:
                status = f"NO_ANSWER ({exc.code().name})"
            self.health.append((start, status, self.clock() - start))
            for part, samples in self.part_samples.items():
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(service=part), timeout=2.0)
                    samples.append((self.clock(), response.status == health_pb2.HealthCheckResponse.SERVING))
                except grpc.aio.AioRpcError:
                    samples.append((self.clock(), False))
            await asyncio.sleep(0.2)

    async def part_health(self, channel, part: str, timeout_s: float = 300.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(channel)
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=part), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)

    async def fault(self, name: str, channel) -> None:
        """Fires one part fault, then follows that part's health entry until it has gone down and come
        back: the record's detection and recovery times."""
        server = self.server
        part = "llm" if name == "kill llm" else "triton"
        pids = server.engine_core_pids() if part == "llm" else [p for p in [server.triton_pid()] if p]
        record = FaultRecord(name, part, self.clock(), self.clock(), pids[0] if pids else None)
        self.faults.append(record)
        log.warning("soak: %s (pid %s) at %.1f s", name, record.pid, record.at_s)
        if name == "stop triton":
            for pid in pids:
                _signal(pid, signal.SIGSTOP)
            watch = asyncio.create_task(self._follow(record, channel))
            await asyncio.sleep(self.settings.stop_triton_s)
            for pid in pids:
                _signal(pid, signal.SIGCONT)
            record.end_s, record.ended = self.clock(), True
            await watch
        else:
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            record.ended = True
            await self._follow(record, channel)

    async def _follow(self, record: FaultRecord, channel, timeout_s: float = 300.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(channel)
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=record.part), timeout=1.0)
                serving = response.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                serving = False
            now = self.clock()
            if not serving and record.detected_s is None:
                record.detected_s = now
            if serving and record.detected_s is not None and record.ended:
                record.recovered_s = now
                return
            await asyncio.sleep(0.1)

    async def run(self, plan: list[Planned]) -> None:
        from serving.proto import bubo_pb2_grpc

        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(self.server.address, options=options) as channel:
            stub = bubo_pb2_grpc.BuboStub(channel)
            stop = asyncio.Event()
            monitor = asyncio.create_task(self.monitor(stop, channel))
            s = self.settings
            # part faults fire at their point of the schedule, one at a time: a fault due while the
            # previous one is still recovering waits for it, so each outage has load before and after
            pending = sorted((int(at * len(plan)), name) for name, at in (
                ("kill triton", s.kill_triton_at), ("kill llm", s.kill_llm_at), ("stop triton", s.stop_triton_at)) if at is not None)
            fault_tasks: list[asyncio.Task] = []
            queue = list(reversed(plan))
            deferred: list[Planned] = []  # requests held back while a part they need is down
            down: dict[str, asyncio.Task] = {}  # part -> the task that waits for it to come back

            async def back_up(part: str) -> None:
                try:
                    await asyncio.sleep(1.0)  # back off: the supervisor may not have seen the failure yet
                    await self.part_health(channel, part)
                finally:  # whatever happens here, the held-back requests are not left waiting forever
                    del down[part]
                    queue.extend(reversed(deferred))  # held-back requests go first
                    deferred.clear()

            async def client() -> None:
                # as a client behind a router would: a request that needs a part known to be down waits
                # until it is back; requests that do not need it go on
                while queue or deferred:
                    if not queue:
                        await asyncio.sleep(0.1)
                        continue
                    item = queue.pop()
                    if item.needs & set(down):
                        deferred.append(item)
                        continue
                    if pending and item.index >= pending[0][0] and all(t.done() for t in fault_tasks):
                        fault_tasks.append(asyncio.create_task(self.fault(pending.pop(0)[1], channel)))
                    outcome = await run_one(stub, item, self.clock)
                    self.outcomes.append(outcome)
                    if outcome.status == "UNAVAILABLE" and outcome.part and outcome.part not in down:
                        down[outcome.part] = asyncio.create_task(back_up(outcome.part))

            try:
                await asyncio.gather(*(client() for _ in range(s.concurrency)))
                await asyncio.gather(*fault_tasks)
                while pending:  # faults the schedule ran out before (a short soak): fire them now, unloaded
                    await self.fault(pending.pop(0)[1], channel)
                # the last fault's recovery belongs to the record: watch until every part is back
                for part in ("triton", "llm"):
                    await self.part_health(channel, part)
                await self.part_health(channel, "")
                await asyncio.sleep(1.0)
            finally:
                stop.set()
                await monitor
        self.outcomes.sort(key=lambda o: o.index)

    def windows(self) -> list[tuple[str, float, float]]:
        """(part, from, to) of each injected outage, with a second of slack on either side."""
        out = []
        for r in self.faults:
            end = r.recovered_s if r.recovered_s is not None else (r.detected_s or r.end_s) + 5.0
            out.append((r.part, r.at_s - 1.0, max(end, r.end_s) + 1.0))
        return out

    def unplanned_outages(self) -> list[dict]:
        """Outages nobody injected, as the server's own health reported them: a part NOT_SERVING outside
        every injected window of that part (e.g. Triton's python backend declaring a stub unhealthy
        on starved cores, then crashing). `to_s` is None if it never came back."""
        injected = self.windows()
        out = []
        for part, samples in self.part_samples.items():
            down_since = None
            for t, serving in samples + [(math.inf, True)]:
                if not serving and down_since is None:
                    down_since = t
                elif serving and down_since is not None:
                    back = None if t == math.inf else t
                    # injected: it began inside an injected fault's window of that part (an outage that
                    # began before one and ran into it was nobody's doing)
                    if not any(p == part and start <= down_since <= end for p, start, end in injected):
                        out.append({"part": part, "from_s": round(down_since, 2), "to_s": None if back is None else round(back, 2)})
                    down_since = None
        return out


def _signal(pid: int, sig: int) -> None:
    import os

    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------------
# accounting
# --------------------------------------------------------------------------------------------------


def allowed_statuses(item: Planned, outcome: Outcome, windows) -> set[str]:
    overlapped = {part for part, start, end in windows if outcome.start_s <= end and outcome.end_s >= start}
    allowed = {"none": {"OK"}, "cancel": {"CANCELLED", "OK"}, "deadline": {"DEADLINE_EXCEEDED", "OK"},
               "bad": {"INVALID_ARGUMENT"}}[item.fault]
    if item.fault != "bad" or item.bad_kind in ("truncated image", "corrupt image", "truncated audio", "corrupt audio"):
        # bad media is judged by Triton's decoders: while Triton is down the request cannot be judged
        if item.needs & overlapped:
            allowed = allowed | {"UNAVAILABLE"}
    return allowed


def account(plan: list[Planned], outcomes: list[Outcome], windows, expected: dict) -> dict:
    by_index = {o.index: o for o in outcomes}
    rows: dict[tuple[str, str], int] = {}
    violations, mismatches, hangs = [], [], []
    unaffected: dict[str, int] = {"triton": 0, "llm": 0}  # OK requests that overlapped an outage of a part they do not need
    for item in plan:
        outcome = by_index.get(item.index)
        if outcome is None:
            violations.append({"index": item.index, "kind": item.kind, "problem": "no outcome (lost)"})
            continue
        rows[(item.fault if item.fault != "bad" else "bad payload", outcome.status)] = rows.get(
            (item.fault if item.fault != "bad" else "bad payload", outcome.status), 0) + 1
        allowed = allowed_statuses(item, outcome, windows)
        duration = outcome.end_s - outcome.start_s
        limit = item.deadline_s if item.fault == "deadline" else 90.0
        if duration > limit + 5.0 or (item.fault != "deadline" and outcome.status == "DEADLINE_EXCEEDED"):
            hangs.append({"index": item.index, "kind": item.kind, "seconds": round(duration, 2), "status": outcome.status})
        if outcome.status not in allowed:
            violations.append({"index": item.index, "kind": item.kind, "fault": item.fault, "status": outcome.status,
                               "allowed": sorted(allowed), "details": outcome.details[:300],
                               "start_s": round(outcome.start_s, 2), "end_s": round(outcome.end_s, 2)})
        elif item.fault == "bad" and outcome.status == "INVALID_ARGUMENT" and not outcome.details.startswith(BAD_FIELDS[item.bad_kind]):
            violations.append({"index": item.index, "kind": item.kind, "status": outcome.status,
                               "problem": f"message does not start with {BAD_FIELDS[item.bad_kind]!r}", "details": outcome.details[:300]})
        if outcome.status == "UNAVAILABLE" and (outcome.part not in ("triton", "llm") or PART_WORDS[outcome.part] not in outcome.details):
            violations.append({"index": item.index, "kind": item.kind, "status": outcome.status,
                               "problem": "UNAVAILABLE without the part named (bubo-part metadata and message)",
                               "part": outcome.part, "details": outcome.details[:300]})
        if outcome.status == "OK":
            for part, start, end in windows:
                if part not in item.needs and outcome.start_s <= end and outcome.end_s >= start:
                    unaffected[part] = unaffected.get(part, 0) + 1
        if outcome.status == "OK" and item.content is not None and item.content in expected:
            want = expected[item.content]
            got = (outcome.token_ids, outcome.entities)
            if got != want:
                mismatches.append({"index": item.index, "kind": item.kind, "content": list(item.content)})
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    return {"requests": len(plan), "outcomes": len(outcomes), "statuses": statuses,
            "by_fault": [{"fault": f, "status": s, "count": n} for (f, s), n in sorted(rows.items())],
            "violations": violations, "answer_mismatches": mismatches, "hangs": hangs,
            "unknown": statuses.get("UNKNOWN", 0), "unaffected_during_outage": unaffected}


async def expected_answers(server, plan: list[Planned], concurrency: int, retried: list | None = None) -> dict:
    """Each distinct fault-free request once, before any fault: the answers OK requests must repeat.
    A request that meets an outage nobody injected (UNAVAILABLE, the part named) is sent again once the
    server is SERVING, as a client behind a router would; `retried` collects those."""
    from serving.proto import bubo_pb2_grpc

    firsts = {}
    for item in plan:
        if item.content is not None and item.content not in firsts:
            firsts[item.content] = item
    items = list(firsts.values())
    answers = {}
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        stub = bubo_pb2_grpc.BuboStub(channel)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(item):
            attempts = 6  # Triton 2.51's python backend can crash more than once in a row on 2 busy cores
            for attempt in range(attempts):
                async with semaphore:
                    outcome = await run_one(stub, item, time.monotonic)
                if outcome.status != "UNAVAILABLE" or attempt == attempts - 1:
                    break
                if retried is not None:
                    retried.append({"index": item.index, "kind": item.kind, "details": outcome.details[:200]})
                await asyncio.to_thread(server.wait_health, "SERVING", "", 300.0)
                await asyncio.sleep(1.0 + attempt)  # health can read SERVING a moment before a new crash is seen
            if outcome.status != "OK":
                raise RuntimeError(f"warm-up request {item.index} ({item.kind}) failed: {outcome.status} {outcome.details}")
            answers[item.content] = (outcome.token_ids, outcome.entities)

        await asyncio.gather(*(one(item) for item in items))
    return answers


def run_soak(server, settings: SoakSettings) -> dict:
    """Drives `server` (a started benchmarks.serve_process.ServeProcess); returns the results dict."""
    images, sounds = media_pool(settings)
    plan = build_plan(settings, images, sounds)
    started = time.monotonic()
    warmup_retries: list[dict] = []
    expected = asyncio.run(expected_answers(server, plan, settings.concurrency, warmup_retries))
    warm = server.resources()
    soak = Soak(server, settings)
    asyncio.run(soak.run(plan))
    end = server.resources()
    unplanned = soak.unplanned_outages()
    # a request that ended up to 2 s before an unplanned outage was seen may have met its start
    windows = soak.windows() + [(u["part"], u["from_s"] - 2.0, (u["to_s"] if u["to_s"] is not None else math.inf) + 1.0)
                                for u in unplanned]
    accounting = account(plan, soak.outcomes, windows, expected)
    durations = [o.end_s - o.start_s for o in soak.outcomes if o.status == "OK"]
    health_latency = [latency for _, _, latency in soak.health]
    return {
        "settings": asdict(settings),
        "duration_s": round(time.monotonic() - started, 1),
        "soak_s": round(max((o.end_s for o in soak.outcomes), default=0.0), 1),
        "distinct_requests_warmed": len(expected),
        "accounting": accounting,
        "unaffected_during_outage": accounting["unaffected_during_outage"],
        "unplanned_outages": unplanned,
        "part_health": {part: [[round(t, 2), serving] for t, serving in samples] for part, samples in soak.part_samples.items()},
        "warmup_retries": warmup_retries,  # warm-up requests that met an outage nobody injected
        "faults": [dict(asdict(r), recovery_s=None if r.recovered_s is None else round(r.recovered_s - r.end_s, 2),
                        detection_s=None if r.detected_s is None else round(r.detected_s - r.at_s, 2)) for r in soak.faults],
        "health": {"checks": len(soak.health), "not_answered": sum(1 for _, s, _ in soak.health if s.startswith("NO_ANSWER")),
                   "max_latency_ms": round(max(health_latency, default=0.0) * 1e3, 1),
                   "p99_latency_ms": round(_quantile(health_latency, 0.99) * 1e3, 1)},
        "ok_latency_s": {"p50": round(_quantile(durations, 0.5), 3), "p99": round(_quantile(durations, 0.99), 3)},
        "requests": [{"index": o.index, "kind": item.kind, "fault": item.fault, "status": o.status, "part": o.part,
                      "start_s": round(o.start_s, 3), "end_s": round(o.end_s, 3)} for item, o in zip(plan, soak.outcomes)],
        "resources": {"after_warmup": warm, "end": end,
                      "rss_growth": round(end["rss_bytes"] / max(warm["rss_bytes"], 1) - 1, 4),
                      "fd_growth": round(end["open_fds"] / max(warm["open_fds"], 1) - 1, 4)},
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def soak_markdown(result: dict) -> str:
    a = result["accounting"]
    lines = [f"## Soak: {a['requests']} requests at c={result['settings']['concurrency']} "
             f"({result['soak_s']:.0f} s under faults)", "",
             "| fault | status | requests |", "| --- | --- | ---: |"]
    lines += [f"| {row['fault']} | {row['status']} | {row['count']} |" for row in a["by_fault"]]
    lines += ["", f"UNKNOWN: {a['unknown']} · violations of the expected status: {len(a['violations'])} · "
                  f"hung past their deadline: {len(a['hangs'])} · OK answers different from the fault-free answer: "
                  f"{len(a['answer_mismatches'])} (of {result['distinct_requests_warmed']} distinct requests)", "",
              "| part fault | pid | detected after | recovered after (s) |", "| --- | ---: | ---: | ---: |"]
    for f in result["faults"]:
        lines.append(f"| {f['name']} | {f['pid']} | {f['detection_s']} s | {f['recovery_s']} |")
    unplanned = result.get("unplanned_outages", [])
    if result.get("warmup_retries"):
        lines += ["", f"Warm-up requests sent again after an outage nobody injected: {len(result['warmup_retries'])} "
                      f"({result['warmup_retries'][0]['details']})."]
    lines += ["", "Outages nobody injected (the server's health said NOT_SERVING): " + (", ".join(
        f"{u['part']} {u['from_s']:.1f}-{u['to_s']:.1f} s" if u["to_s"] is not None else f"{u['part']} from {u['from_s']:.1f} s, never back"
        for u in unplanned) or "none") + "."]
    h, r = result["health"], result["resources"]
    lines += ["", f"Health checks during the soak: {h['checks']}, unanswered {h['not_answered']}, "
                  f"p99 {h['p99_latency_ms']} ms, max {h['max_latency_ms']} ms.", "",
              "| process tree | after warm-up | end | growth |", "| --- | ---: | ---: | ---: |",
              f"| RSS | {r['after_warmup']['rss_bytes'] / 2**30:.2f} GiB | {r['end']['rss_bytes'] / 2**30:.2f} GiB | {r['rss_growth'] * 100:+.1f} % |",
              f"| open file descriptors | {r['after_warmup']['open_fds']} | {r['end']['open_fds']} | {r['fd_growth'] * 100:+.1f} % |",
              f"| processes | {r['after_warmup']['processes']} | {r['end']['processes']} | |",
              f"| Triton shm regions | {r['after_warmup']['triton_shm_regions']} | {r['end']['triton_shm_regions']} | |"]
    return "\n".join(lines) + "\n"


def draw_timeline(path: Path, result: dict, bucket_s: float = 5.0) -> Path:
    """Requests ending per second over the soak, by outcome; the part faults are in the title."""
    from benchmarks.plot import line_chart

    requests = result["requests"]
    end = max((r["end_s"] for r in requests), default=0.0)
    buckets = int(end // bucket_s) + 1
    groups = {"OK": ("OK",), "UNAVAILABLE": ("UNAVAILABLE",),
              "refused or cut by the client (INVALID_ARGUMENT, CANCELLED, DEADLINE_EXCEEDED)": (
                  "INVALID_ARGUMENT", "CANCELLED", "DEADLINE_EXCEEDED")}
    series = {name: [0.0] * buckets for name in groups}
    for r in requests:
        for name, statuses in groups.items():
            if r["status"] in statuses:
                series[name][int(r["end_s"] // bucket_s)] += 1 / bucket_s
    faults = ", ".join(f"{f['name']} at {f['at_s']:.0f} s" for f in result["faults"])
    return line_chart(path, f"Soak: requests ending per second ({faults})", [f"{i * bucket_s:.0f}" for i in range(buckets)],
                      series, x_title="seconds into the soak", y_title="requests/s")


def write_soak_results(directory: Path, result: dict) -> None:
    import json

    (directory / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    machine = result.get("machine", {})
    text = soak_markdown(result) + (f"\nCommand: `bubo bench --suite soak --soak-requests {result['settings']['requests']}` "
                                    f"(server: `{result.get('command', '')}`); exit code of `bubo serve` after SIGTERM: "
                                    f"{result.get('serve_exit_code')}.\n\nMachine: {json.dumps(machine)}\n")
    try:
        draw_timeline(directory / "timeline.png", result)
        text += "\n![timeline](timeline.png)\n"
    except Exception as exc:  # noqa: BLE001 - the chart is a convenience; the numbers are in the JSON
        log.warning("timeline chart failed: %s", exc)
    (directory / "results.md").write_text(text)


def main_soak(out_root: Path, settings: SoakSettings, cache_dir: Path | None = None) -> Path:
    """`bubo bench --suite soak`: starts `bubo serve`, soaks it, writes results.json/results.md/timeline.png."""
    from benchmarks.report import machine_info, run_dir
    from benchmarks.serve_process import ServeProcess

    directory = run_dir(out_root, "soak")
    cache = cache_dir or Path.home() / ".cache" / "bubogpt"
    server = ServeProcess(cache, directory / "serve.log").start()
    print(f"soak: bubo serve up on {server.address} (pid {server.pid}); {settings.requests} requests ...", file=sys.stderr, flush=True)
    try:
        result = run_soak(server, settings)
    finally:
        code = server.stop()
    result["machine"] = machine_info()
    result["serve_exit_code"] = code
    result["command"] = " ".join(server.command())
    write_soak_results(directory, result)
    return directory

