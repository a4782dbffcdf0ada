"""Settings compared side by side on a machine whose speed drifts between minutes: one `bubo serve` per
setting, all running at once, then rounds of the same sweep sent to each in turn, in an order rotated
every round, so that drift hits every setting alike. Each round has its own seed: the frontend caches
embeddings by content, and a repeated picture would skip the encoders. The baseline (demo, one process)
runs the round-0 seed's requests after the servers are stopped.

Used by the comparisons in benchmarks/results/*/interleaved.py (ONNX Runtime threads, vLLM's executor,
the embedding models' layout), through `compare_serve_variants`.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

from benchmarks.loadgen import level_line, run_sweep
from benchmarks.serve_process import ServeProcess
from benchmarks.suites import SuiteSettings


def e2e_sweep(concurrencies=(1, 16)) -> dict:
    """run_sweep's level arguments as the e2e suite has them, at `concurrencies`."""
    e2e = SuiteSettings()
    return dict(concurrencies=list(concurrencies), per_client=e2e.per_client, min_requests=e2e.min_requests,
                max_requests=e2e.max_requests, time_cap_s=e2e.time_cap_s, max_new_tokens=e2e.max_new_tokens)


def compare_serve_variants(variants: dict[str, list[str]], out_path: str | Path, rounds: int, record: dict,
                           sweep: dict | None = None) -> dict:
    """One `bubo serve` per variant (its extra command-line arguments), all started, `rounds` interleaved
    rounds, the servers stopped, then the baseline. `record` (what the variants are) is written to
    `out_path` with the rounds after every round, and with the baseline at the end."""
    sweep = sweep or e2e_sweep()
    cache = Path.home() / ".cache" / "bubogpt"
    scratch = Path(tempfile.mkdtemp(prefix="bubo-interleave-"))
    out = {"sweep": sweep, **record, "rounds": []}

    def save(done: list[dict]) -> None:
        out["rounds"] = done
        Path(out_path).write_text(json.dumps(out, indent=2))

    servers: dict[str, ServeProcess] = {}
    try:
        for name, extra in variants.items():
            servers[name] = ServeProcess(cache, scratch / f"{name.replace(' ', '-').replace(',', '')}.log", extra).start()
        time.sleep(5)  # let every stack's start-up work settle
        done = interleaved_rounds(servers, rounds, sweep, after_round=save)
    finally:
        for server in servers.values():
            server.stop()
    out["baseline"] = baseline_sweep(sweep)
    save(done)
    return out


def interleaved_rounds(servers: dict[str, ServeProcess], rounds: int, sweep: dict,
                       after_round: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """`sweep`: run_sweep's level arguments (no seed). Returns, per round, {setting: run_sweep's result}."""
    names = list(servers)
    done: list[dict] = []
    for index in range(rounds):
        shift = index % len(names)
        results = {}
        for name in names[shift:] + names[:shift]:
            time.sleep(2)  # an idle server's vLLM readers stop spinning 1 s after their last message
            results[name] = run_sweep(servers[name].address, ground="off", grounding_effect_requests=0,
                                      server_pid=servers[name].pid, seed=1 + index, **sweep)
            for level in results[name]["levels"]:
                print(f"round {index}", level_line(name, level), flush=True)
        done.append(results)
        if after_round is not None:
            after_round(done)
    return done


def baseline_sweep(sweep: dict) -> dict:
    from benchmarks.baseline import run_baseline_sweep_async

    result = asyncio.run(run_baseline_sweep_async(
        concurrencies=sweep["concurrencies"], per_client=sweep["per_client"], min_requests=sweep["min_requests"],
        max_requests=sweep["max_requests"], time_cap_s=sweep["time_cap_s"], max_new_tokens=sweep["max_new_tokens"],
        seed=1, grounding_effect_requests=0))
    for level in result["levels"]:
        print("baseline", level_line("baseline", level), flush=True)
    return result
