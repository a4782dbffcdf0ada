"""vLLM's executor with ONNX Runtime's pools no longer spinning: one `bubo serve` per setting, all started at
once, then rounds of the sweep (c=1, c=16; no grounding; fresh requests each round) against each in turn;
the baseline (demo) last.

    python benchmarks/results/vllm-executor-20261203/interleaved.py OUT.json [ROUNDS]

mp:  vLLM's default on CPU here: engine core and worker processes, the worker and the core read each other's
     shared-memory queue and spin (sched_yield) for 1 s after each message
uni: the model runs inside the engine core (`--vllm-executor uni`): no worker, no queue to spin on
"""
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.interleave import baseline_sweep, interleaved_rounds
from benchmarks.serve_process import ServeProcess

SWEEP = dict(concurrencies=[1, 16], per_client=4, min_requests=16, max_requests=64, time_cap_s=60, max_new_tokens=32)
VARIANTS = {"mp": ["--vllm-executor", "mp"], "uni": ["--vllm-executor", "uni"]}

rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
cache = Path.home() / ".cache" / "bubogpt"
scratch = Path(tempfile.mkdtemp())
servers = {}
out = {"sweep": SWEEP, "variants": VARIANTS, "rounds": []}


def save(done):
    out["rounds"] = done
    Path(sys.argv[1]).write_text(json.dumps(out, indent=2))


try:
    for name, extra in VARIANTS.items():
        servers[name] = ServeProcess(cache, scratch / f"{name}.log", extra).start()
    time.sleep(5)
    interleaved_rounds(servers, rounds, SWEEP, after_round=save)
finally:
    for server in servers.values():
        server.stop()
out["baseline"] = baseline_sweep(SWEEP)
save(out["rounds"])
