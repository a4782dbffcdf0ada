"""Full-size dry run on CPU: the bubogpt-7b networks at their real sizes through every door, with
random weights (issue 19). Not in CI: about an hour on a 2-core, 24 GiB machine.

    python -m benchmarks.full_size                              # every step; writes benchmarks/results/full-size-cpu-<ts>/
    python -m benchmarks.full_size --work /data/fs --steps vllm  # one step again, on the files earlier steps left

Steps, one process each (its wall time and the peak RSS of its whole process tree are measured from
outside, sampled every 0.2 s), one at a time because the machine holds one full-size tier at most:
  init    `bubo init --preset bubogpt-7b` (float16 on disk, grounding included)
  export  `bubo export --weights` to ONNX at full size (external data for graphs over 2 GiB), with
          the exporter's own parity check at batch 3 against PyTorch
  triton  Triton loads that repository; image_embed, audio_embed and grounding answer a real photo
          (matplotlib's sample `grace_hopper.jpg`) and a synthetic clip; per-network latency at batch 1
          from Triton's own statistics (compute_infer per model, after a warm-up request)
  vllm    vLLM's CPU build loads the 7B directory with our plugin (the served "mm" route) and
          generates 16 tokens with the image and audio embeddings the triton step returned
  serve   a verdict, not a run: whether the measured peaks of triton and vllm fit in this machine's
          memory together (what `bubo serve --weights` on it needs), and if not, why
Results: results.json (per step: command, wall s, peak RSS, files and sizes, what the step measured)
and README.md (the tables). A failed step is recorded with its log tail and the run goes on where
the next step does not depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("init", "export", "triton", "vllm", "serve")
NEEDS = {"export": "init", "triton": "export", "vllm": "triton", "serve": "vllm"}
PROMPT = "What do you see and hear? Describe it."
NEW_TOKENS = 16


def _bubo() -> list[str]:
    return [sys.executable, "-m", "bubo_cli"]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# -- measuring a step from outside ---------------------------------------------------------------------------


class TreeRss:
    """Peak resident memory of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_step(name: str, command: list[str], out: Path, timeout_s: float) -> dict:
    """Runs one step's process, its output to out/<name>.log; returns the record."""
    log_path = out / f"{name}.log"
    record = {"step": name, "command": " ".join(command)}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        sampler = TreeRss(process.pid)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            code = process.wait()
            record["error"] = f"timed out after {timeout_s:.0f} s"
        record["peak_rss_bytes"] = sampler.stop()
    record["wall_s"] = round(time.perf_counter() - start, 1)
    record["exit_code"] = code
    if code != 0 and "error" not in record:
        record["error"] = f"exit code {code}"
    if code != 0:
        record["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    result = out / f"{name}.json"  # what the step itself measured (triton, vllm)
    if result.is_file():
        record.update(json.loads(result.read_text()))
    return record


def sizes(directory: Path) -> dict[str, int]:
    """Bytes per top-level entry of `directory` (folders summed)."""
    found = {}
    for entry in sorted(directory.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        found[entry.name] = sum(p.stat().st_size for p in files)
    return found


def repository_files(repo: Path) -> dict[str, int]:
    """Bytes of each network's ONNX file (+ external data) in a model repository, by network name (in a
    fused CPU repository the embedding networks sit in image_embed/1/<network>/)."""
    found = {}
    for onnx in sorted(repo.glob("*/1/**/model.onnx")):
        name = onnx.parent.name if onnx.parent.name != "1" else onnx.parent.parent.name
        found[name] = sum(p.stat().st_size for p in onnx.parent.iterdir() if p.name.startswith("model.onnx"))
    return found


# -- the steps that run inside their own process -------------------------------------------------------------


def photo_bytes() -> bytes:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return f.read()


def triton_step(work: Path, out: Path) -> dict:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from bubogpt.samples import make_audio_bytes
    from serving.app import free_port
    from serving.triton import TritonPorts, TritonServer

    repo = work / "repo"
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    record: dict = {"model_load_threads": 1}
    start = time.perf_counter()
    # one model loads at a time (Triton's default is four at once): ONNX Runtime holds a graph's
    # weights twice while it builds a session, and the machine has 24 GiB for a 20 GiB peak
    server = TritonServer(repo, ports, log_path=out / "tritonserver.log", extra_args=["--model-load-thread-count=1"])
    # not `with server.start()`: entering the context starts a second Triton on the same ports (both
    # earlier tries failed that way, "Socket already in use", after the first one was ready)
    server.start(timeout=1800)
    try:
        record["triton_ready_s"] = round(time.perf_counter() - start, 1)
        client = grpcclient.InferenceServerClient(server.url_grpc)
        inputs = {"image_embed": ("IMAGE", photo_bytes()), "audio_embed": ("AUDIO", make_audio_bytes(seconds=5.0)),
                  "grounding": ("IMAGE", photo_bytes())}
        answers, request_s = {}, {}
        for model, (name, data) in inputs.items():
            tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            times = []
            for _ in range(3):  # the first one warms up (ONNX Runtime's first run allocates)
                t0 = time.perf_counter()
                result = client.infer(model, [tensor], client_timeout=1800)
                times.append(time.perf_counter() - t0)
            request_s[model] = [round(t, 2) for t in times]
            answers[model] = result
        for model in ("image_embed", "audio_embed"):
            embeds = answers[model].as_numpy("EMBEDS")[0]
            np.save(work / f"{model}.npy", embeds)
            record[f"{model}_shape"] = list(embeds.shape)
            record[f"{model}_finite"] = bool(np.isfinite(embeds).all())
        grounded = answers["grounding"]
        record["grounding"] = {"tags": len(grounded.as_numpy("TAGS")[0]), "entities": len(grounded.as_numpy("LABELS")[0]),
                               "boxes_shape": list(grounded.as_numpy("BOXES")[0].shape)}
        record["request_s"] = request_s
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
        per_model = {}
        for entry in stats:
            success = entry["inference_stats"]["success"]
            count = int(success.get("count", 0))
            if not count:
                continue
            infer = entry["inference_stats"]["compute_infer"]
            per_model[entry["name"]] = {"requests": count, "compute_infer_ms": round(int(infer["ns"]) / count / 1e6, 1),
                                        "request_ms": round(int(success["ns"]) / count / 1e6, 1)}
        record["per_model_batch1"] = per_model
    finally:
        server.stop()
    return record


def vllm_step(work: Path, out: Path) -> dict:
    import numpy as np
    import torch

    from bubogpt.prompt import Turn
    from serving.llm_engine import Finished, ModalityEmbeds, SamplingOptions, TextDelta, VLLMEngine

    async def main() -> dict:
        record: dict = {}
        engine = VLLMEngine(work / "model" / "llm", 32, kv_cache_gib=2.0, max_num_seqs=4, restart_on_failure=False)
        record["max_model_len"] = engine.context
        start = time.perf_counter()
        await engine.start()
        record["vllm_ready_s"] = round(time.perf_counter() - start, 1)
        modalities = [ModalityEmbeds(m, torch.from_numpy(np.load(work / f"{m}_embed.npy"))) for m in ("image", "audio")]
        sampling = SamplingOptions(temperature=0.0, max_new_tokens=NEW_TOKENS)
        try:
            for attempt in ("first", "second"):
                t0 = time.perf_counter()
                first_token, token_ids = None, []
                async for event in engine.generate([Turn("user", PROMPT)], modalities, sampling):
                    if first_token is None:
                        first_token = time.perf_counter() - t0
                    if isinstance(event, TextDelta):
                        token_ids += event.token_ids
                    if isinstance(event, Finished):
                        finished = event
                total = time.perf_counter() - t0
                record[attempt] = {"prompt_tokens": finished.prompt_tokens, "new_tokens": finished.completion_tokens,
                                   "finish_reason": finished.finish_reason, "ttft_s": round(first_token, 2),
                                   "total_s": round(total, 2),
                                   "decode_ms_per_token": round((total - first_token) / max(1, finished.completion_tokens - 1) * 1e3, 1)}
                record[attempt]["token_ids"] = token_ids
            record["greedy_repeats"] = record["first"]["token_ids"] == record["second"]["token_ids"]
        finally:
            await engine.stop()
        return record

    return asyncio.run(main())


INNER = {"triton": triton_step, "vllm": vllm_step}


# -- the run ---------------------------------------------------------------------------------------------------


def command_of(step: str, work: Path, out: Path) -> list[str]:
    if step == "init":
        return [*_bubo(), "init", "--preset", "bubogpt-7b", "--out", str(work / "model")]
    if step == "export":
        return [*_bubo(), "export", "--weights", str(work / "model"), "--out", str(work / "repo"), "--overwrite"]
    return [sys.executable, "-m", "benchmarks.full_size", "--inner", step, "--work", str(work), "--out", str(out)]


def serve_verdict(records: dict, total_memory: int) -> dict:
    need = records.get("triton", {}).get("peak_rss_bytes", 0) + records.get("vllm", {}).get("peak_rss_bytes", 0)
    verdict = {"step": "serve", "needs_bytes": need, "machine_bytes": total_memory}
    missing = [step for step in ("triton", "vllm") if "peak_rss_bytes" not in records.get(step, {}) or "error" in records[step]]
    if missing:
        verdict["skipped"] = f"the {' and '.join(missing)} step{'s' if len(missing) > 1 else ''} did not complete"
    elif need >= 0.9 * total_memory:
        verdict["skipped"] = (f"Triton with the full-size networks ({_gib(records['triton']['peak_rss_bytes'])} at its peak) and "
                              f"vLLM with the 7B model ({_gib(records['vllm']['peak_rss_bytes'])}) need {_gib(need)} together; "
                              f"this machine has {_gib(total_memory)} and no swap")
    return verdict


def write_readme(out: Path, records: list[dict]) -> None:
    lines = [f"# Full-size dry run on CPU ({time.strftime('%Y-%m-%d')})", "",
             "`python -m benchmarks.full_size` (bubogpt-7b sizes, random weights, ONNX Runtime in Triton's python backend,",
             "vLLM's CPU build). One step at a time; peak RSS is the step's whole process tree.", "",
             "| step | wall s | peak RSS | result |", "| --- | ---: | ---: | --- |"]
    for r in records:
        if "skipped" in r:
            result = "skipped: " + r["skipped"]
        elif "error" in r:
            result = "FAILED: " + r["error"]
        else:
            result = {"init": lambda: f"model directory {_gib(sum(r.get('files', {}).values()))}",
                      "export": lambda: f"repository {_gib(sum(r.get('onnx_files', {}).values()))} of ONNX",
                      "vllm": lambda: (f"ready in {r.get('vllm_ready_s')} s; second answer: TTFT {r['second']['ttft_s']} s "
                                       f"({r['second']['prompt_tokens']} prompt tokens), {r['second']['decode_ms_per_token']} "
                                       f"ms per token; greedy tokens repeat: {r.get('greedy_repeats')}"),
                      "triton": lambda: (f"ready in {r.get('triton_ready_s')} s; per request (s, first is warm-up): "
                                         + "; ".join(f"{m} {t}" for m, t in r.get("request_s", {}).items())),
                      "serve": lambda: f"fits: {_gib(r['needs_bytes'])} of {_gib(r['machine_bytes'])}"}[r["step"]]()
        lines.append(f"| {r['step']} | {r.get('wall_s', '')} | {_gib(r['peak_rss_bytes']) if r.get('peak_rss_bytes') else ''} | {result} |")
    for r in records:
        if r.get("files") or r.get("onnx_files"):
            lines += ["", f"## {r['step']}: files", "", "| file | size |", "| --- | ---: |"]
            for name, n in (r.get("files") or r.get("onnx_files")).items():
                lines.append(f"| {name} | {_gib(n)} |")
        if r.get("per_model_batch1"):
            lines += ["", "## Per network at batch 1 (Triton's statistics, mean over the requests)", "",
                      "| model | requests | compute ms | request ms |", "| --- | ---: | ---: | ---: |"]
            for name, s in r["per_model_batch1"].items():
                lines.append(f"| {name} | {s['requests']} | {s['compute_infer_ms']} | {s['request_ms']} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", help="where the model directory and repository go (default: a folder in --out's parent)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/full-size-cpu-<timestamp>)")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--timeout-s", type=float, default=3600, help="per step")
    parser.add_argument("--inner", choices=sorted(INNER), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"full-size-cpu-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or Path.home() / ".cache" / "bubogpt" / "full-size")
    if args.inner:
        record = INNER[args.inner](work, out)
        (out / f"{args.inner}.json").write_text(json.dumps(record, indent=2) + "\n")
        return 0
    import psutil

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise SystemExit(f"--steps: unknown {unknown}; choose from {list(STEPS)}")
    work.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    records = {r["step"]: r for r in json.loads(results_path.read_text())} if results_path.is_file() else {}
    for step in steps:
        if step in NEEDS and NEEDS[step] in records and "error" in records[NEEDS[step]]:
            records[step] = {"step": step, "skipped": f"the {NEEDS[step]} step failed"}
        elif step == "serve":
            records[step] = serve_verdict(records, psutil.virtual_memory().total)
        else:
            print(f"[full-size] {step} ...", flush=True)
            record = run_step(step, command_of(step, work, out), out, args.timeout_s)
            if step == "init" and "error" not in record:
                record["files"] = sizes(work / "model")
            if step == "export" and "error" not in record:
                record["onnx_files"] = repository_files(work / "repo")
                record["parity"] = json.loads((work / "repo" / "bubo_repository.json").read_text())["parity"]
            records[step] = record
            print(f"[full-size] {step}: {record.get('error', 'ok')} in {record['wall_s']} s, "
                  f"peak {_gib(record['peak_rss_bytes'])}", flush=True)
        ordered = [records[s] for s in STEPS if s in records]
        results_path.write_text(json.dumps(ordered, indent=2) + "\n")
        write_readme(out, ordered)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
