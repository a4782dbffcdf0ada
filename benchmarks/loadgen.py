"""End-to-end gRPC load generator against a running `bubo serve`.

    python -m benchmarks.loadgen --server 127.0.0.1:50051 --server-pid $(pgrep -f "bubo serve") \\
        --concurrency 1,2,4,8,16,32 --json loadgen.json

Closed loop: at concurrency c, c clients each send the next request of the level's fixed, seeded mix
(benchmarks/inputs.py) as soon as their previous one finished, until the level's requests are used
up or its time cap passed (in-flight requests then get a grace period, and are cancelled after it).
Each level has fresh content (its own seed), so the embedding cache only serves what a real chat
would hit (the multi-turn follow-ups).

Grounding (`--ground auto`, the default): one probe request tells whether the server grounds. The
levels measure the chat path (no grounding, so they compare with the baseline's levels) unless
`--ground-levels` asks every image request to be grounded; then `--grounding-effect-requests`
fresh image requests run one at a time without and with grounding (the "grounding adds <= 10% to
mean latency" check; the baseline does the same).

Per level: TTFT and inter-token latency p50/p99 (from delta arrival times), output tokens/s,
requests/s, e2e latency, the grounding tail (last token -> last entity/mask event, when the server
sends entity events; n/a otherwise) and the done tail (last token -> Done), errors by gRPC status
code, and the peak memory of the server's whole process tree (`--server-pid`; see
benchmarks/memory.py). Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path

import grpc

from benchmarks.inputs import BenchRequest, grounding_pair_requests, level_requests, requests_per_level, warmup_requests
from benchmarks.memory import MemorySampler
from benchmarks.request_stats import RequestRecord, fmt, summarize
from serving.client import CHANNEL_OPTIONS, chat_request, grpc_target
from serving.proto import bubo_pb2_grpc

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32)


async def send(stub, request: BenchRequest, record: RequestRecord, ground: bool, timeout_s: float = 600.0) -> RequestRecord:
    message = chat_request(request.text, request.image, request.audio, history=list(request.history),
                           ground=ground and bool(request.image), max_new_tokens=request.max_new_tokens,
                           min_new_tokens=request.min_new_tokens)
    record.sent_s = time.perf_counter()
    call = stub.Chat(message, timeout=timeout_s)
    try:
        async for event in call:
            now = time.perf_counter()
            kind = event.WhichOneof("event")
            if kind == "delta":
                tokens = len(event.delta.token_ids)
                if tokens:
                    if record.first_token_s is None:
                        record.first_token_s = now
                    record.delta_times.append(now)
                    record.delta_tokens.append(tokens)
            elif kind == "entity":
                record.entity_times.append(now)
            elif kind == "done":
                done = event.done
                record.done_s = now
                record.finish_reason = done.finish_reason
                record.usage_prompt_tokens = done.usage.prompt_tokens
                record.usage_completion_tokens = done.usage.completion_tokens
                record.entity_latency = [(t.after_phrase_ms, t.before_answer_end) for t in done.entity_timings]
                t = done.timings
                record.server_timings_ms = {"queue": t.queue_ms, "encode": t.encode_ms, "first_token": t.first_token_ms,
                                            "generation": t.generation_ms, "grounding": t.grounding_ms, "total": t.total_ms}
        if record.done_s is None:
            record.status, record.error = "NO_DONE_EVENT", "the stream ended without a Done event"
    except grpc.aio.AioRpcError as exc:
        record.status, record.error = exc.code().name, exc.details() or ""
    except asyncio.CancelledError:
        call.cancel()
        record.status, record.error = "CLIENT_TIME_CAP", "cancelled by the load generator after the level's time cap"
        raise
    return record


async def run_level(stub, requests: list[BenchRequest], concurrency: int, time_cap_s: float, ground: bool = False,
                    grace_s: float = 60.0) -> tuple[list[RequestRecord], float]:
    """Runs one closed-loop level; returns the records and the wall time (first send -> last finish)."""
    pending = iter(requests)
    records: list[RequestRecord] = []
    start = time.perf_counter()
    deadline = start + time_cap_s

    async def client() -> None:
        for request in pending:  # one iterator shared by every client
            if time.perf_counter() >= deadline:
                return
            record = RequestRecord(request.index, request.kind, sent_s=time.perf_counter())
            records.append(record)
            await send(stub, request, record, ground)

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=time_cap_s + grace_s)
    for task in late:
        task.cancel()
    if late:
        await asyncio.gather(*late, return_exceptions=True)
    ends = [r.done_s for r in records if r.done_s is not None]
    wall = (max(ends) if ends else time.perf_counter()) - start
    return records, wall


async def probe_grounding(stub, request: BenchRequest) -> tuple[bool, str]:
    """Whether the server grounds: one image request with ground=True (FAILED_PRECONDITION -> no)."""
    record = await send(stub, request, RequestRecord(-1, request.kind, 0.0), ground=True)
    if record.ok:
        return True, "entity events" if record.entity_times else "grounding on (no entities matched in the probe answer)"
    if record.status == "FAILED_PRECONDITION":
        return False, f"server has no grounding models ({record.error})"
    return False, f"grounding probe failed: {record.status}: {record.error}"


async def run_sweep_async(
    address: str,
    concurrencies=DEFAULT_CONCURRENCY,
    per_client: int = 4,
    min_requests: int = 8,
    max_requests: int = 64,
    time_cap_s: float = 60.0,
    max_new_tokens: int = 32,
    min_new_tokens: int = 0,
    seed: int = 0,
    ground: str = "auto",
    server_pid: int | None = None,
    warmup: bool = True,
    ground_levels: bool = False,
    grounding_effect_requests: int = 3,
    keep_records: bool = False,
    log=None,
) -> dict:
    log = log or (lambda *_: None)
    sampler = MemorySampler(server_pid) if server_pid else None
    result: dict = {"address": address, "settings": {
        "concurrency": list(concurrencies), "per_client": per_client, "min_requests": min_requests,
        "max_requests": max_requests, "time_cap_s": time_cap_s, "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, "seed": seed,
        "ground": ground, "ground_levels": ground_levels, "grounding_effect_requests": grounding_effect_requests,
        "server_pid": server_pid}}
    # the clients' own channel settings; "host:port,host:port" spreads the load over several frontends
    async with grpc.aio.insecure_channel(grpc_target(address), options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)
        stub = bubo_pb2_grpc.BuboStub(channel)
        if sampler:
            sampler.start()
        try:
            grounding, note = False, "grounding off (--ground off)"
            if ground in ("auto", "on"):
                image_request = next(r for r in warmup_requests(seed) if r.image)
                grounding, note = await probe_grounding(stub, image_request)
                if ground == "on" and not grounding:
                    raise RuntimeError(f"--ground on, but {note}")
            if warmup:
                for request in warmup_requests(seed):
                    await send(stub, request, RequestRecord(-1, request.kind, 0.0), ground=grounding and ground_levels)
            level_ground = grounding and ground_levels
            result["grounding"] = {"available": grounding, "note": note, "levels_ground_image_requests": level_ground}
            if sampler:
                sampler.mark()  # the warm-up is not part of any level's window
            levels = []
            for concurrency in concurrencies:
                count = requests_per_level(concurrency, per_client, min_requests, max_requests)
                requests = [dataclasses.replace(r, min_new_tokens=min_new_tokens)
                            for r in level_requests(concurrency, count, seed, max_new_tokens)]
                records, wall = await run_level(stub, requests, concurrency, time_cap_s, ground=level_ground)
                summary = summarize(records, concurrency, wall)
                if sampler:
                    summary["memory"] = sampler.mark()
                if keep_records:
                    summary["records"] = [r.to_dict() for r in records]
                levels.append(summary)
                log(level_line("served", summary))
            result["levels"] = levels
            effect = {"concurrency": 1, "available": grounding, "note": note}
            if grounding and grounding_effect_requests:
                effect.update(await measure_grounding_effect(
                    lambda requests, concurrency, cap, ground: run_level(stub, requests, concurrency, cap, ground=ground),
                    "served", grounding_effect_requests, seed, max_new_tokens, time_cap_s, log))
            result["grounding_effect"] = effect
        finally:
            if sampler:
                sampler.stop()
                result["memory"] = sampler.summary()
    return result


def run_sweep(address: str, **kwargs) -> dict:
    return asyncio.run(run_sweep_async(address, **kwargs))


async def measure_grounding_effect(run, label: str, count: int, seed: int, max_new_tokens: int, time_cap_s: float, log) -> dict:
    """The same image requests at concurrency 1 without and with grounding (served and baseline alike).

    `run(requests, concurrency, time_cap_s, ground)` -> (records, wall seconds).
    """
    off_requests, on_requests = grounding_pair_requests(count, seed, max_new_tokens)
    off, wall_off = await run(off_requests, 1, time_cap_s * 4, False)
    on, wall_on = await run(on_requests, 1, time_cap_s * 4, True)
    s_off, s_on = summarize(off, 1, wall_off), summarize(on, 1, wall_on)
    effect = {"off": s_off, "on": s_on, "grounding_tail_ms": s_on["grounding_tail_ms"],
              "phrase_to_mask_ms": s_on["phrase_to_mask_ms"]}
    if label == "served":
        # the same requests again: grounding has finished (its result is cached), so what is left of
        # phrase -> mask is the matching and the stream itself
        again, wall_again = await run(on_requests, 1, time_cap_s * 4, True)
        effect["phrase_to_mask_ms_grounded_before"] = summarize(again, 1, wall_again)["phrase_to_mask_ms"]
    if s_off["latency_ms"]["mean"] and s_on["latency_ms"]["mean"]:
        effect["mean_latency_ratio"] = s_on["latency_ms"]["mean"] / s_off["latency_ms"]["mean"]
    log(level_line(f"{label}, image requests, grounding off", s_off))
    log(level_line(f"{label}, image requests, grounding on", s_on))
    return effect


def level_line(label: str, s: dict) -> str:
    mem = s.get("memory", {}).get("peak_rss_bytes")
    return (f"[{label}] c={s['concurrency']:>2} n={s['completed']}/{s['requests']} "
            f"{fmt(s['requests_per_s'], 2)} req/s {fmt(s['output_tokens_per_s'], 0)} tok/s "
            f"TTFT p50 {fmt(s['ttft_ms']['p50'])} p99 {fmt(s['ttft_ms']['p99'])} ms "
            f"ITL p50 {fmt(s['itl_ms']['p50'])} p99 {fmt(s['itl_ms']['p99'])} ms"
            + (f" errors {s['errors']}" if s["errors"] else "")
            + (f" peak RSS {mem / 2**30:.2f} GiB" if mem else ""))


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be positive integers, got {text!r}")
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051", help="address of a running `bubo serve`")
    parser.add_argument("--server-pid", type=int, help="pid of the server process: its whole tree's memory is sampled")
    parser.add_argument("--concurrency", type=parse_levels, default=list(DEFAULT_CONCURRENCY))
    parser.add_argument("--per-client", type=int, default=4, help="requests per level = per-client x concurrency ...")
    parser.add_argument("--min-requests", type=int, default=8, help="... at least this many ...")
    parser.add_argument("--max-requests", type=int, default=64, help="... at most this many")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per level before no new requests are sent")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ground", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--ground-levels", action="store_true", help="ground every image request of every level")
    parser.add_argument("--grounding-effect-requests", type=int, default=3,
                        help="image requests run one at a time without and with grounding (0: skip)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--records", action="store_true", help="keep every request's record in the JSON")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    result = run_sweep(
        args.server, concurrencies=args.concurrency, per_client=args.per_client, min_requests=args.min_requests,
        max_requests=args.max_requests, time_cap_s=args.time_cap, max_new_tokens=args.max_new_tokens, seed=args.seed,
        ground=args.ground, server_pid=args.server_pid, warmup=not args.no_warmup,
        ground_levels=args.ground_levels, grounding_effect_requests=args.grounding_effect_requests,
        keep_records=args.records,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
