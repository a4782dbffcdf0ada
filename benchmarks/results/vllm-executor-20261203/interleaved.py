"""vLLM's executor with ONNX Runtime's pools no longer spinning: one `bubo serve` per setting, all started at
once, then rounds of the sweep (c=1, c=16; no grounding; fresh requests each round) against each in turn;
the baseline (demo) last.

    python benchmarks/results/vllm-executor-20261203/interleaved.py OUT.json [ROUNDS]

mp:  vLLM's default on CPU here: engine core and worker processes, the worker and the core read each other's
     shared-memory queue and spin (sched_yield) for 1 s after each message
uni: the model runs inside the engine core (`--vllm-executor uni`): no worker, no queue to spin on
"""
import sys

from benchmarks.interleave import compare_serve_variants

VARIANTS = {"mp": ["--vllm-executor", "mp"], "uni": ["--vllm-executor", "uni"]}

compare_serve_variants(VARIANTS, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3, {"variants": VARIANTS})
