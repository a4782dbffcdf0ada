"""The long-answer level (issue 14): 32 streams of 512 new tokens each, served, with the frontend's
incremental detokenizer (`StopStringStream`, now) and with the whole answer decoded again at every token
(what the frontend did before), side by side and interleaved.

    python -m benchmarks.long_answers [--rounds 3] [--tokens 512] [--concurrency 32] [--out benchmarks/results]

Two `bubo serve` stacks run at once; the "before" one is `bubo serve` with `StopStringStream` swapped for
`FullDecodeStream` in its frontend process (nothing else differs). Every answer is exactly `--tokens` long
(min_new_tokens = max_new_tokens: no EOS, no stop string), text-only questions, one per client. Per level: the frontend process's own CPU time
(user + system of the `bubo serve` process, not its children: vLLM's engine core and worker and Triton are
children) per streamed token, and the inter-token latency p50 / p99 the clients saw. Writes
results/long-answers-<ts>/ (results.json, README.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_run
from benchmarks.serve_process import ServeProcess
from serving.llm_engine import StopStringStream

ROOT = Path(__file__).resolve().parents[1]
FULL_DECODE_FLAG = "--serve-with-full-decode"


class FullDecodeStream(StopStringStream):
    """The frontend's stream before incremental detokenization: every push decodes the whole answer and
    searches all of it that is not emitted yet (cost per token grows with the answer)."""

    def _settle(self, upto: int) -> None:
        if upto <= self._read:
            return
        self._decoded = self._decode(self.token_ids[:upto])
        self._read = upto
        self._searched = self._emitted


class FullDecodeServe(ServeProcess):
    def command(self) -> list[str]:
        serve = super().command()
        return [sys.executable, "-m", "benchmarks.long_answers", FULL_DECODE_FLAG, *serve[serve.index("serve") + 1:]]


def serve_with_full_decode(argv: list[str]) -> int:
    """`bubo serve ARGV` (serving's own subcommand) with the full-decode stream in the frontend."""
    import serving.commands
    import serving.llm_engine
    from serving.logs import configure_logging

    serving.llm_engine.StopStringStream = FullDecodeStream  # the engines look it up when a request starts
    parser = argparse.ArgumentParser(prog="bubo")
    serving.commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *argv])
    configure_logging("INFO")
    return args.func(args)


def frontend_cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def _run_level(address: str, concurrency: int, tokens: int, seed: int):
    import grpc

    from benchmarks.inputs import QUESTIONS, BenchRequest
    from benchmarks.loadgen import run_level
    from serving.client import CHANNEL_OPTIONS
    from serving.proto import bubo_pb2_grpc

    requests = [BenchRequest(i, "text", text=f"{QUESTIONS[(seed + i) % len(QUESTIONS)]} ({seed}.{i})", max_new_tokens=tokens,
                             min_new_tokens=tokens) for i in range(concurrency)]
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        return await run_level(bubo_pb2_grpc.BuboStub(channel), requests, concurrency, time_cap_s=300)


def one_level(server: ServeProcess, concurrency: int, tokens: int, seed: int) -> dict:
    """One request per client, text only: what this level measures is the frontend and the LLM streaming,
    not the encoders (with pictures and sounds in the mix, see benchmarks/README.md on the stubs)."""
    import asyncio

    from benchmarks.request_stats import summarize

    before = frontend_cpu_s(server.pid)
    records, wall = asyncio.run(_run_level(server.address, concurrency, tokens, seed))
    cpu = frontend_cpu_s(server.pid) - before
    level = summarize(records, concurrency, wall)
    streamed = level["output_tokens_from_deltas"] or level["output_tokens"]
    return {"seed": seed, "completed": level["completed"], "errors": level["errors"], "tokens": streamed,
            "frontend_cpu_s": round(cpu, 3), "frontend_cpu_us_per_token": round(1e6 * cpu / max(streamed, 1), 1),
            "itl_ms": level["itl_ms"], "output_tokens_per_s": level["output_tokens_per_s"], "wall_s": level["wall_s"]}


def markdown(record: dict) -> str:
    lines = [f"# Long answers: {record['concurrency']} streams x {record['tokens']} tokens, served", "",
             f"`{record['command']}`", "",
             "| detokenizer | frontend CPU per token (us), per round | median | ITL p50 ms (median) | ITL p99 ms (median) | out tok/s (median) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, rounds in record["variants"].items():
        per_token = [r["frontend_cpu_us_per_token"] for r in rounds]
        lines.append(f"| {name} | {', '.join(f'{v:.0f}' for v in per_token)} | {statistics.median(per_token):.0f} | "
                     f"{statistics.median(r['itl_ms']['p50'] for r in rounds):.1f} | "
                     f"{statistics.median(r['itl_ms']['p99'] for r in rounds):.1f} | "
                     f"{statistics.median(r['output_tokens_per_s'] for r in rounds):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FULL_DECODE_FLAG]:
        return serve_with_full_decode(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    cache = Path.home() / ".cache" / "bubogpt"
    scratch = Path(tempfile.mkdtemp(prefix="bubo-long-"))
    servers = {"incremental (now)": ServeProcess(cache, scratch / "incremental.log"),
               "full decode per token (before)": FullDecodeServe(cache, scratch / "full.log")}
    record = {"command": "python -m benchmarks.long_answers " + " ".join(argv), "concurrency": args.concurrency,
              "tokens": args.tokens, "variants": {name: [] for name in servers}}
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():  # warm-up: one short level each
            one_level(server, 4, 16, seed=999)
        names = list(servers)
        for index in range(args.rounds):
            order = names[index % 2:] + names[:index % 2]
            for name in order:
                time.sleep(2)
                row = one_level(servers[name], args.concurrency, args.tokens, seed=1 + index)
                record["variants"][name].append(row)
                print(f"round {index} [{name}] {row['completed']} answers, {row['tokens']} tokens, frontend "
                      f"{row['frontend_cpu_us_per_token']} us/token, ITL p99 {row['itl_ms']['p99']:.1f} ms", flush=True)
    finally:
        for server in servers.values():
            if server.process is not None:
                server.stop()
    write_run(args.out, "long-answers", record, markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
