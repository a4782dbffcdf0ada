"""Where a request's time goes, stage by stage (issue 14): a sampling profiler over the whole `bubo serve`
process tree (py-spy, every process and thread, CPU only) and Triton's own per-model statistics, for one
load level at a time.

    python -m benchmarks.profile_stages [--levels 1,16] [--out benchmarks/results]

For each level: `bubo serve` runs the benchmark's request mix (benchmarks/inputs.py, the e2e suite's),
py-spy records every process of the server's tree while it does (`--subprocesses`, 100 Hz, active
threads only), and Triton's statistics are read before and after. Results, per request of the level:

* CPU ms per stage: each py-spy sample is given to the stage of the innermost frame that names one
  (STAGES: request validation, prompt preparation, detokenization, entity matching, gRPC and protobuf,
  the Triton client, vLLM's frontend side, its scheduler, its model steps, ...); samples of a process
  with no stage frame count for that process ("other"). On 2 cores, CPU ms of all processes can exceed
  the wall time per request only when work overlaps.
* Triton per model: requests, batches (mean batch size), queue, compute input / infer / output ms per
  request (the python-backend transfers are in input and output).

Writes profile-<timestamp>/results.json and results.md (the table benchmarks/README.md quotes) and the
raw collapsed stacks (`py-spy --format raw`) for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.serve_process import ServeProcess

# (stage, substrings of a frame "function (file:line)"); the innermost matching frame wins, so the more
# specific stages come first within one process.
STAGES = [
    ("request validation", ("validate_chat", "validate_media", "_check_decoded", "serving/server.py:_parser", "parse (server.py")),
    ("prompt preparation", ("prepare (llm_engine.py", "prepare (remote_llm.py", "layout_prompt", "build_prompt", "splice_embeddings",
                            "mm_engine_prompt")),
    ("detokenization", ("StopStringStream", "push (llm_engine.py", "_emit (llm_engine.py", "_settle (llm_engine.py", "decode_tokens",
                        "(decode.py")),
    ("entity matching", ("matching/",)),
    ("grounding result parsing", ("parse_grounding", "grounding_client.py")),
    ("Triton client (tritonclient, numpy)", ("tritonclient/",)),
    ("vLLM frontend (AsyncLLM, output processing, IPC)", ("vllm/v1/engine/async_llm", "vllm/v1/engine/output_processor",
                                                          "vllm/v1/engine/core_client", "vllm/v1/engine/input_processor",
                                                          "vllm/inputs", "vllm/multimodal", "vllm/renderers", "vllm/v1/engine/detokenizer")),
    ("gRPC and protobuf (serialization, transport)", ("grpc/", "google/protobuf", "_server.py", "SerializeToString")),
    ("HTTP door (aiohttp)", ("aiohttp/",)),
    # vLLM's worker busy-waits (sched_yield) up to 1 s after each message before it sleeps on its socket
    ("vLLM spin-wait between steps (shm queue)", ("SpinCondition.wait", "acquire_read", "acquire_write")),
    ("vLLM scheduling", ("vllm/v1/core/sched", "vllm/v1/core/kv_cache", "vllm/v1/core/block_pool")),
    ("vLLM model steps (forward, sampling)", ("vllm/model_executor", "vllm/v1/worker", "vllm/v1/sample", "vllm/v1/attention",
                                              "vllm/attention", "torch/nn/modules", "vllm/v1/executor")),
    ("vLLM engine core: waiting for input", ("_process_input_queue",)),
    ("vLLM engine core loop (IPC, output)", ("vllm/v1/engine/core.py", "vllm/v1/serial_utils", "zmq/", "msgspec")),
    ("audio front end (decode, resample, Kaldi fbank)", ("audio_features.py",)),
    ("image decode and resize", ("bubogpt/image.py", "PIL/")),
    ("ONNX Runtime session", ("onnxruntime/",)),
    ("python-backend glue (pb_utils, numpy)", ("model.py", "triton_python_backend_utils", "numpy/")),
    ("asyncio event loop", ("asyncio/",)),
]


def process_kind(header: str) -> str:
    """Which part of the tree a py-spy process header names."""
    if "EngineCore" in header:
        return "vLLM engine core"
    if "Worker" in header:
        return "vLLM worker"
    if "triton_python_backend_stub" in header or "model.py" in header:
        match = re.search(r"/([a-z_]+)/1/model\.py", header)
        return f"Triton python model {match.group(1) if match else '?'}"
    if "bubo_cli" in header or "bubo serve" in header or "serve" in header:
        return "frontend (bubo serve)"
    return "other process"


def stage_of(frames: list[str]) -> str | None:
    for frame in reversed(frames):  # innermost first
        for stage, keys in STAGES:
            if any(key in frame for key in keys):
                return stage
    return None


def read_raw(path: Path) -> tuple[Counter, Counter]:
    """py-spy's raw output -> samples per (process kind, stage) and per process kind."""
    by_stage: Counter = Counter()
    by_process: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        # py-spy --subprocesses prefixes the chain of processes, parent first: the last one ran the stack
        processes = [f for f in frames if f.startswith("process ")]
        kind = process_kind(processes[-1] if processes else "")
        frames = frames[len(processes):]
        n = int(count)
        by_process[kind] += n
        by_stage[(kind, stage_of(frames) or "other")] += n
    return by_stage, by_process


def triton_stats(http_url: str) -> dict:
    with urllib.request.urlopen(f"{http_url}/v2/models/stats", timeout=10) as response:
        stats = json.loads(response.read())
    out = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        out[model["name"]] = {
            "requests": int(model.get("inference_count", 0)),
            "batches": int(model.get("execution_count", 0)),
            **{key: int(inference.get(key, {}).get("ns", 0)) for key in ("queue", "compute_input", "compute_infer", "compute_output")},
        }
    return out


def triton_delta(before: dict, after: dict, requests: int) -> list[dict]:
    rows = []
    for name, end in sorted(after.items()):
        start = before.get(name, {})
        d = {k: end[k] - start.get(k, 0) for k in end}
        if not d["requests"]:
            continue
        rows.append({"model": name, "requests": d["requests"], "mean_batch": d["requests"] / max(1, d["batches"]),
                     **{f"{k}_ms_per_request": d[k] / 1e6 / d["requests"] for k in ("queue", "compute_input", "compute_infer", "compute_output")},
                     "per_chat_request": d["requests"] / requests})
    return rows


def triton_http_url(serve: ServeProcess) -> str:
    match = re.search(r"Triton: gRPC \S+, HTTP (\S+),", serve.log_path.read_text(errors="replace"))
    if not match:
        raise RuntimeError("the server's banner does not say where its Triton listens")
    url = match.group(1)
    return url if "://" in url else f"http://{url}"


def profile_level(serve: ServeProcess, concurrency: int, requests: int, directory: Path, rate: int, seed: int) -> dict:
    from benchmarks.loadgen import run_sweep_async

    triton = triton_http_url(serve)
    raw = directory / f"pyspy-c{concurrency}.txt"
    before = triton_stats(triton)
    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(serve.pid),
                            "--subprocesses", "--format", "raw", "--rate", str(rate), "--output", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(2.0)  # py-spy attaches to every process of the tree
    started = time.perf_counter()
    result = asyncio.run(run_sweep_async(serve.address, concurrencies=[concurrency], per_client=max(1, requests // concurrency),
                                         min_requests=requests, max_requests=requests, time_cap_s=300, max_new_tokens=32, seed=seed,
                                         ground="off", warmup=False, grounding_effect_requests=0))
    wall = time.perf_counter() - started
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
    after = triton_stats(triton)
    level = result["levels"][0]
    done = level["completed"] or 1
    row = {"concurrency": concurrency, "requests": level["completed"], "wall_s": wall, "wall_ms_per_request": 1e3 * wall / done,
           "requests_per_s": level["requests_per_s"], "ttft_ms_p50": level["ttft_ms"]["p50"], "latency_ms_p50": level["latency_ms"]["p50"],
           "server_timings_ms_mean": level.get("server_timings_ms_mean"), "rate": rate,
           "triton": triton_delta(before, after, done), "pyspy_raw": raw.name}
    return {**row, **attribute(raw, rate, done)}


def attribute(raw: Path, rate: int, requests: int) -> dict:
    """CPU ms per request by process and by (process, stage), from py-spy's raw stacks."""
    by_stage, by_process = read_raw(raw)
    ms = 1000.0 / rate / max(1, requests)  # one sample, in CPU ms per request
    stages = defaultdict(dict)
    for (kind, stage), n in by_stage.items():
        stages[kind][stage] = n * ms
    return {"cpu_ms_per_request_by_process": {k: n * ms for k, n in by_process.most_common()},
            "cpu_ms_per_request_by_stage": {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in stages.items()}}


def to_markdown(levels: list[dict]) -> str:
    lines = ["CPU ms per request, by process and stage (py-spy, every process of the tree, active threads):", "",
             "| process | stage | " + " | ".join(f"c={lv['concurrency']}" for lv in levels) + " |",
             "|---|---|" + "---|" * len(levels)]
    keys = []
    for lv in levels:
        for kind, stages in lv["cpu_ms_per_request_by_stage"].items():
            for stage in stages:
                if (kind, stage) not in keys:
                    keys.append((kind, stage))
    order = {k: -max(lv["cpu_ms_per_request_by_stage"].get(k[0], {}).get(k[1], 0) for lv in levels) for k in keys}
    for kind, stage in sorted(keys, key=lambda k: (k[0], order[k])):
        values = [lv["cpu_ms_per_request_by_stage"].get(kind, {}).get(stage) for lv in levels]
        if max(v or 0 for v in values) < 0.05:
            continue
        lines.append(f"| {kind} | {stage} | " + " | ".join("" if v is None else f"{v:.2f}" for v in values) + " |")
    lines.append("| **all processes** | | " + " | ".join(f"**{sum(lv['cpu_ms_per_request_by_process'].values()):.1f}**" for lv in levels) + " |")
    lines.append("| wall ms per request (level wall time / requests) | | " + " | ".join(f"{lv['wall_ms_per_request']:.1f}" for lv in levels) + " |")
    lines += ["", "Triton's statistics, per request of each model (ms), mean batch size:", "",
              "| model | " + " | ".join(f"c={lv['concurrency']}: batch, queue, in, infer, out" for lv in levels) + " |",
              "|---|" + "---|" * len(levels)]
    models = sorted({row["model"] for lv in levels for row in lv["triton"]})
    for model in models:
        cells = []
        for lv in levels:
            row = next((r for r in lv["triton"] if r["model"] == model), None)
            cells.append("" if row is None else f"{row['mean_batch']:.1f}, {row['queue_ms_per_request']:.1f}, "
                         f"{row['compute_input_ms_per_request']:.1f}, {row['compute_infer_ms_per_request']:.1f}, "
                         f"{row['compute_output_ms_per_request']:.1f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.loadgen import run_sweep
    from benchmarks.report import machine_info, run_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default 16 at c=1, 64 above)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "bubogpt"))
    parser.add_argument("--reread", help="a profile-* folder: attribute its raw stacks again (after a change to STAGES)")
    args = parser.parse_args(argv)
    if args.reread:
        directory = Path(args.reread)
        results = json.loads((directory / "results.json").read_text())
        for level in results["levels"]:
            level.update(attribute(directory / level["pyspy_raw"], level.get("rate", args.rate), level["requests"]))
        (directory / "results.json").write_text(json.dumps(results, indent=2))
        (directory / "results.md").write_text(to_markdown(results["levels"]))
        print(to_markdown(results["levels"]))
        return 0
    directory = run_dir(args.out, "profile")
    serve = ServeProcess(Path(args.cache_dir), Path(tempfile.mkdtemp(prefix="profile-")) / "serve.log")
    serve.start()
    levels = []
    try:
        run_sweep(serve.address, concurrencies=[1], min_requests=4, max_requests=4, ground="off", grounding_effect_requests=0)  # warm-up
        for i, concurrency in enumerate(int(c) for c in args.levels.split(",")):
            requests = args.requests or (16 if concurrency == 1 else 64)
            levels.append(profile_level(serve, concurrency, requests, directory, args.rate, seed=100 + i))
            print(f"c={concurrency}: {levels[-1]['requests']} requests, {levels[-1]['wall_ms_per_request']:.1f} wall ms per request", flush=True)
    finally:
        serve.stop()
    (directory / "results.json").write_text(json.dumps({"machine": machine_info(), "levels": levels}, indent=2))
    (directory / "results.md").write_text(to_markdown(levels))
    print(to_markdown(levels))
    print(f"results: {directory}")
    return 0


if __name__ == "__main__":  # pragma: no cover - the benchmark
    sys.exit(main())
