"""Benchmark suites: each starts what it needs on free loopback ports, runs, and writes
benchmarks/results/<suite>-<timestamp>/ (results.json, results.md with the targets table, PNG charts).

* e2e      the served stack (Triton + vLLM + gRPC frontend, `serving.app.Stack`) under the gRPC load
           generator (a separate process, so the client does not share the frontend's interpreter),
           the frontend-overhead check (gRPC TTFT vs the engine's own TTFT, same prompt), then the
           baseline (demo-like, plain PyTorch, one request at a time) on the same requests
* baseline the baseline alone
* perf     perf_analyzer against Triton's image_embed / audio_embed (and grounding, when exported):
           concurrency sweep with the encoders' dynamic batching on, then off (a copy of the
           repository whose encoder configs lack the dynamic_batching block)
* all      e2e + perf in one run directory

Every suite also computes the bubogpt-7b memory plan (benchmarks/memory_plan.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.inputs import make_audio_bytes, make_image_bytes
from benchmarks.report import machine_info, run_dir, write_results

log = logging.getLogger(__name__)

SUITES = ("e2e", "perf", "baseline", "all")
ENCODER_ENSEMBLES = {"image_embed": "IMAGE", "audio_embed": "AUDIO", "grounding": "IMAGE"}


@dataclass
class SuiteSettings:
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    per_client: int = 4
    min_requests: int = 16  # c=1: 4 requests of each kind, so that its TTFT p50 is not one request's
    max_requests: int = 64
    time_cap_s: float = 60.0
    max_new_tokens: int = 32
    seed: int = 0
    frontend_repeats: int = 20
    perf_concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    perf_measurement_ms: int = 4000
    perf_stability: int = 50
    perf_max_trials: int = 6
    # the grounding ensemble takes seconds per request on CPU: count windows of a few requests, few levels
    perf_grounding_concurrency: list[int] = field(default_factory=lambda: [1, 4])
    perf_grounding_requests_per_window: int = 3
    ground_levels: bool = False  # ground every image request of every level (both sides; slow on CPU)
    grounding_effect_requests: int = 4  # image requests run one at a time without and with grounding

    @classmethod
    def quick(cls) -> "SuiteSettings":
        """Minutes, not tens of minutes: fewer requests and tokens, shorter perf windows, c=1 and 8 only."""
        return cls(per_client=2, min_requests=4, max_requests=32, time_cap_s=20.0, max_new_tokens=16,
                   frontend_repeats=8, perf_concurrency=[1, 8], perf_measurement_ms=2000, perf_max_trials=6,
                   perf_grounding_concurrency=[], grounding_effect_requests=2)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SuiteOptions:
    suite: str = "e2e"
    out: Path = Path("benchmarks/results")
    quick: bool = False
    weights: Path | None = None
    device: str = "cpu"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "bubogpt")
    settings: SuiteSettings | None = None

    def resolved_settings(self) -> SuiteSettings:
        return self.settings or (SuiteSettings.quick() if self.quick else SuiteSettings())


class LoopThread:
    """One event loop in a background thread: the served stack lives on it (vLLM binds to its loop)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-stack-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# e2e: served stack + load generator + frontend overhead (+ baseline)
# --------------------------------------------------------------------------------------------------


def start_stack(options: SuiteOptions):
    from serving.app import ServeOptions, Stack

    loop = LoopThread()
    serve_options = ServeOptions(weights=options.weights, port=0, metrics_port=None, http_port=0, cache_dir=options.cache_dir,
                                 device=options.device, llm_engine="vllm", grounding=True)
    try:
        stack = loop.run(Stack(serve_options).start(), timeout=1200)
    except BaseException:
        loop.close()
        raise
    return loop, stack


def stop_stack(loop: LoopThread, stack) -> None:
    try:
        loop.run(stack.stop(grace_s=5), timeout=180)
    finally:
        loop.close()


def run_loadgen_process(address: str, server_pid: int, settings: SuiteSettings, out_json: Path) -> dict:
    """The load generator in its own process (its client work does not compete for the frontend's GIL)."""
    command = [
        sys.executable, "-m", "benchmarks.loadgen", "--server", address, "--server-pid", str(server_pid),
        "--concurrency", ",".join(str(c) for c in settings.concurrency),
        "--per-client", str(settings.per_client), "--min-requests", str(settings.min_requests),
        "--max-requests", str(settings.max_requests), "--time-cap", str(settings.time_cap_s),
        "--max-new-tokens", str(settings.max_new_tokens), "--seed", str(settings.seed),
        "--grounding-effect-requests", str(settings.grounding_effect_requests), "--json", str(out_json),
    ] + (["--ground-levels"] if settings.ground_levels else [])
    budget = len(settings.concurrency) * (settings.time_cap_s + 60) + 2 * (4 * settings.time_cap_s + 60) + 300
    # same environment and working directory as this process: what imports here imports there, and
    # a relative path means the same in both
    done = subprocess.run(command, timeout=budget)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}): {' '.join(command)}")
    return json.loads(out_json.read_text())


def measure_frontend_overhead(loop: LoopThread, stack, repeats: int, max_new_tokens: int = 8) -> dict:
    """TTFT through gRPC (client clock) vs TTFT of `stack.engine.generate` called in-process, same prompt,
    alternating so both see the same prefix-cache state and machine load. A second pair uses an image
    whose embeddings the server has cached (the engine gets the same cached rows)."""
    import grpc

    from bubogpt.prompt import Turn
    from serving.client import chat_request
    from serving.llm_engine import ModalityEmbeds, SamplingOptions, TextDelta
    from serving.proto import bubo_pb2_grpc

    text = "Explain in a few words what a gRPC frontend does."
    image = make_image_bytes(320, 240, fmt="PNG", seed=4242)
    sampling = SamplingOptions(temperature=0.0, max_new_tokens=max_new_tokens)

    async def engine_ttft(modalities) -> float:
        start = time.perf_counter()
        first = None
        async for event in stack.engine.generate([Turn("user", text)], modalities, sampling):
            if first is None and isinstance(event, TextDelta) and event.token_ids:
                first = time.perf_counter() - start
        return first

    channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}", options=[("grpc.max_send_message_length", 64 << 20)])
    stub = bubo_pb2_grpc.BuboStub(channel)

    def grpc_ttft(image_bytes: bytes) -> float:
        start = time.perf_counter()
        first = None
        for event in stub.Chat(chat_request(text, image=image_bytes, max_new_tokens=max_new_tokens)):
            if first is None and event.WhichOneof("event") == "delta" and event.delta.token_ids:
                first = time.perf_counter() - start
        return first

    results = {}
    try:
        image_rows = loop.run(stack.encoders.embed("image", image))[0]
        for label, image_bytes, modalities in (("text", b"", []), ("image_cached", image, [ModalityEmbeds("image", image_rows)])):
            for _ in range(2):  # warm-up: prefix cache, first-call paths
                grpc_ttft(image_bytes)
                loop.run(engine_ttft(modalities))
            grpc_times, engine_times = [], []
            for _ in range(repeats):
                grpc_times.append(grpc_ttft(image_bytes))
                engine_times.append(loop.run(engine_ttft(modalities)))
            results[label] = (grpc_times, engine_times)
    finally:
        channel.close()

    def stats(values):
        ms = [v * 1e3 for v in values if v is not None]
        return {"p50": statistics.median(ms), "mean": statistics.fmean(ms), "min": min(ms), "max": max(ms)}

    g, e = results["text"]
    gi, ei = results["image_cached"]
    out = {
        "prompt": f"text only, {text!r}, greedy, max_new_tokens {max_new_tokens}",
        "repeats": repeats,
        "grpc_ttft_ms": stats(g),
        "engine_ttft_ms": stats(e),
        "image_cached": {"grpc_ttft_ms": stats(gi), "engine_ttft_ms": stats(ei)},
    }
    out["ratio"] = out["grpc_ttft_ms"]["p50"] / out["engine_ttft_ms"]["p50"]
    out["image_cached"]["ratio"] = out["image_cached"]["grpc_ttft_ms"]["p50"] / out["image_cached"]["engine_ttft_ms"]["p50"]
    out["note"] = (f"ratio of medians; with a cached image in the prompt: {out['image_cached']['ratio']:.2f}x "
                   f"({out['image_cached']['grpc_ttft_ms']['p50']:.1f} vs {out['image_cached']['engine_ttft_ms']['p50']:.1f} ms); "
                   "the gRPC client runs in the frontend's process (a small bias against gRPC)")
    return out


def run_served(options: SuiteOptions, settings: SuiteSettings, directory: Path, notes: list[str]) -> tuple[dict, dict]:
    _say("e2e: starting the served stack (Triton + vLLM + gRPC frontend) ...")
    started = time.perf_counter()
    loop, stack = start_stack(options)
    try:
        _say(f"e2e: stack up in {time.perf_counter() - started:.0f} s on 127.0.0.1:{stack.port}; load generator ...")
        served = run_loadgen_process(f"127.0.0.1:{stack.port}", os.getpid(), settings, directory / "loadgen.json")
        _say("e2e: frontend overhead (gRPC TTFT vs the engine's own TTFT) ...")
        frontend = measure_frontend_overhead(loop, stack, settings.frontend_repeats)
    finally:
        stop_stack(loop, stack)
    notes.append("served: the stack runs in the suite's process (frontend) with Triton, its python-backend stubs and "
                 "vLLM's engine core as child processes; the load generator is a separate process, excluded from "
                 "the memory sum. Memory is RSS summed over that tree (PSS in results.json).")
    notes.append(f"grounding: {served.get('grounding', {}).get('note', 'unknown')}")
    return served, frontend


def run_baseline(options: SuiteOptions, settings: SuiteSettings, notes: list[str]) -> dict:
    from benchmarks.baseline import run_baseline_sweep_async

    _say("baseline: plain PyTorch, one request at a time ...")
    result = asyncio.run(run_baseline_sweep_async(
        concurrencies=settings.concurrency, per_client=settings.per_client, min_requests=settings.min_requests,
        max_requests=settings.max_requests, time_cap_s=settings.time_cap_s, max_new_tokens=settings.max_new_tokens,
        seed=settings.seed, model_dir=options.weights, ground_levels=settings.ground_levels,
        grounding_effect_requests=settings.grounding_effect_requests, log=_say,
    ))
    notes.append(f"baseline: {result['grounding']['note']}")
    return result


# --------------------------------------------------------------------------------------------------
# perf: perf_analyzer against Triton, dynamic batching on vs off
# --------------------------------------------------------------------------------------------------


def strip_dynamic_batching(config: str) -> str:
    """config.pbtxt text without its `dynamic_batching { ... }` block (nested braces allowed)."""
    match = re.search(r"dynamic_batching\s*\{", config)
    if not match:
        return config
    depth, i = 0, match.end() - 1
    while i < len(config):
        depth += {"{": 1, "}": -1}.get(config[i], 0)
        i += 1
        if depth == 0:
            break
    end = i + 1 if i < len(config) and config[i] == "\n" else i
    return config[: match.start()] + config[end:]


def batching_off_copy(repository: Path, out: Path) -> tuple[Path, list[str]]:
    """A copy of `repository` whose network models (not ensembles, not pre-processing) lack dynamic batching.

    Version directories are symlinked (weights and engines are not copied); configs are rewritten."""
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    for entry in sorted(repository.iterdir()):
        if not entry.is_dir():
            shutil.copy2(entry, out / entry.name)
            continue
        target = out / entry.name
        target.mkdir()
        for item in entry.iterdir():
            if item.name == "config.pbtxt":
                text = item.read_text()
                network = 'platform: "ensemble"' not in text and not entry.name.endswith(("_preprocess", "_postprocess"))
                if network and "dynamic_batching" in text:
                    text = strip_dynamic_batching(text)
                    changed.append(entry.name)
                (target / item.name).write_text(text)
            else:
                (target / item.name).symlink_to(item.resolve())
    return out, changed


def perf_payloads(input_name: str, count: int = 6) -> list[bytes]:
    if input_name == "AUDIO":
        return [make_audio_bytes(seconds=4.0, seed=500 + i) for i in range(count)]
    return [make_image_bytes(320, 240, fmt="JPEG" if i % 2 else "PNG", seed=500 + i) for i in range(count)]


def warm_up_triton(url: str, models: list[str], count: int = 3) -> None:
    """A few inferences per ensemble before measuring (first calls create sessions, allocate arenas)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        for model in models:
            name = ENCODER_ENSEMBLES[model]
            for payload in perf_payloads(name, count):
                tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[payload]], dtype=object))
                try:
                    client.infer(model, [tensor], client_timeout=120)
                except Exception as exc:  # noqa: BLE001 - the measurement itself will report a broken model
                    log.warning("warm-up of %s failed: %s", model, exc)
                    break
    finally:
        client.close()


def _perf_level(model, url, name, payloads, concurrency, settings, extra, errors, variant) -> dict | None:
    """One perf_analyzer level; an unstable measurement is retried once with windows twice as long."""
    from benchmarks.perf_analyzer import run_perf_analyzer

    window = settings.perf_measurement_ms
    for attempt in range(2):
        try:
            row = run_perf_analyzer(model, url, name, payloads, str(concurrency), window, settings.perf_stability,
                                    settings.perf_max_trials, timeout=600, extra_args=extra)[-1]
        except Exception as exc:  # noqa: BLE001 - recorded; the sweep goes on
            reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            _say(f"[perf] {model} {variant} c={concurrency}: failed ({reason})"
                 + ("; retrying with longer windows" if not attempt else ""))
            if attempt:
                errors.append(f"{model} {variant} c={concurrency}: {exc}")
            window *= 2
            continue
        row["measurement_ms"] = window if not extra else None
        _say(f"[perf] {model} {variant} c={concurrency}: {row['throughput']:.1f} infer/s, "
             f"p50 {row['p50_us'] / 1e3:.1f} ms, p99 {row['p99_us'] / 1e3:.1f} ms")
        return row
    return None


def run_perf(options: SuiteOptions, settings: SuiteSettings, directory: Path, notes: list[str]) -> dict:
    from benchmarks.perf_analyzer import perf_analyzer_command
    from serving.app import ServeOptions, ensure_repository, free_port
    from serving.triton import TritonPorts, TritonServer

    model_dir = options.weights
    if model_dir is None:
        from bubogpt.defaults import default_model_dir

        model_dir = default_model_dir()
    _say("perf: exporting (or reusing) the Triton repository ...")
    repository = ensure_repository(Path(model_dir), ServeOptions(cache_dir=options.cache_dir, device=options.device))
    models = [m for m in ENCODER_ENSEMBLES if (repository / m / "config.pbtxt").is_file()]
    if "grounding" not in models:
        notes.append("perf: the repository has no grounding model; only image_embed and audio_embed were measured")
    elif not settings.perf_grounding_concurrency:
        models.remove("grounding")
        notes.append("perf: the grounding ensemble was not measured (no --perf-grounding levels; --quick skips it: "
                     "seconds per request on CPU)")
    notes.append("perf: with dynamic batching on, a request that finds no batch partner waits up to the configured "
                 "max_queue_delay_microseconds at each batched network, which shows at concurrency 1")
    result: dict = {"repository": str(repository), "models": {m: {} for m in models}, "errors": [],
                    "settings": {"concurrency": settings.perf_concurrency, "measurement_ms": settings.perf_measurement_ms,
                                 "stability_percentage": settings.perf_stability, "max_trials": settings.perf_max_trials}}
    result["command_example"] = " ".join(perf_analyzer_command(
        "image_embed", "127.0.0.1:8001", "IMAGE", "input.json", "report.csv", "8", settings.perf_measurement_ms,
        settings.perf_stability, settings.perf_max_trials))
    with tempfile.TemporaryDirectory(prefix="bubo-perf-") as tmp:
        off_repo, changed = batching_off_copy(repository, Path(tmp) / "repository-no-batching")
        result["batching_off_models"] = changed
        servers: dict[str, TritonServer] = {}
        try:
            # both servers up at once, measurements interleaved (on, off, on, off ...): on a shared, noisy
            # machine slow drifts in background load then hit both variants alike
            for variant, repo in (("batching_on", repository), ("batching_off", off_repo)):
                _say(f"perf: Triton on the {variant} repository ...")
                ports = TritonPorts(free_port(), free_port(), free_port())
                servers[variant] = TritonServer(repo, ports, log_path=directory / f"triton-{variant}.log").start(timeout=300)
                warm_up_triton(servers[variant].url_grpc, models)
            for model in models:
                name = ENCODER_ENSEMBLES[model]
                payloads = perf_payloads(name)
                levels, extra = settings.perf_concurrency, None
                if model == "grounding":
                    levels = settings.perf_grounding_concurrency
                    extra = ["--measurement-mode", "count_windows", "--measurement-request-count",
                             str(settings.perf_grounding_requests_per_window)]
                for concurrency in levels:
                    for variant, triton in servers.items():
                        row = _perf_level(model, triton.url_grpc, name, payloads, concurrency, settings, extra,
                                          result["errors"], variant)
                        if row:
                            result["models"][model].setdefault(variant, []).append(row)
        finally:
            for triton in servers.values():
                triton.stop()
    with open(directory / "perf.csv", "w") as handle:
        handle.write("model,dynamic_batching,concurrency,throughput_infer_s,p50_us,p99_us,server_queue_us,"
                     "server_compute_infer_us,measurement_ms\n")
        for model, variants in result["models"].items():
            for variant, rows in variants.items():
                for r in rows:
                    handle.write(f"{model},{variant.replace('batching_', '')},{r['concurrency']:.0f},{r['throughput']:.3f},"
                                 f"{r['p50_us']:.0f},{r['p99_us']:.0f},{r['server_queue_us']:.0f},"
                                 f"{r['server_compute_infer_us']:.0f},{r['measurement_ms']}\n")
    return result


# --------------------------------------------------------------------------------------------------
# charts and the driver
# --------------------------------------------------------------------------------------------------


def _series(result: dict | None, levels: list[int], getter) -> list:
    by_c = {s["concurrency"]: s for s in (result or {}).get("levels", [])}
    out = []
    for c in levels:
        try:
            out.append(getter(by_c[c]) if c in by_c else None)
        except (KeyError, TypeError):
            out.append(None)
    return out


def draw_charts(directory: Path, results: dict) -> list[str]:
    from benchmarks.plot import bar_chart, line_chart

    charts = []
    served, baseline = results.get("served"), results.get("baseline")
    if served or baseline:
        levels = sorted({s["concurrency"] for r in (served, baseline) if r for s in r.get("levels", [])})
        runs = {name: r for name, r in (("served (gRPC)", served), ("baseline (demo)", baseline)) if r}
        for filename, title, y_title, getter in (
            ("requests_per_s.png", "Requests/s vs concurrency", "requests/s", lambda s: s["requests_per_s"]),
            ("output_tokens_per_s.png", "Output tokens/s vs concurrency", "tokens/s", lambda s: s["output_tokens_per_s"]),
            ("ttft.png", "Time to first token (p50, p99)", "ms", None),
            ("itl.png", "Inter-token latency (p50, p99)", "ms", None),
        ):
            if getter is None:
                metric = "ttft_ms" if filename == "ttft.png" else "itl_ms"
                series = {f"{name} {q}": _series(r, levels, lambda s, m=metric, q=q: s[m][q])
                          for name, r in runs.items() for q in ("p50", "p99")}
            else:
                series = {name: _series(r, levels, getter) for name, r in runs.items()}
            charts.append(str(line_chart(directory / filename, title, levels, series, y_title=y_title)))
        if served:
            series = {"served stack RSS": _series(served, levels, lambda s: s["memory"]["peak_rss_bytes"] / 2**30)}
            pss = _series(served, levels, lambda s: (s["memory"]["peak_pss_bytes"] or 0) / 2**30 or None)
            if any(pss):
                series["served stack PSS"] = pss
            charts.append(str(line_chart(directory / "memory.png", "Peak memory of the whole stack", levels, series,
                                         y_title="GiB")))
    perf = results.get("perf")
    if perf:
        for model, variants in perf.get("models", {}).items():
            levels = sorted({int(r["concurrency"]) for rows in variants.values() for r in rows})
            if not levels:
                continue
            series = {}
            for variant, rows in variants.items():
                by_c = {int(r["concurrency"]): r["throughput"] for r in rows}
                series[f"dynamic batching {variant.replace('batching_', '')}"] = [by_c.get(c) for c in levels]
            charts.append(str(bar_chart(directory / f"perf_{model}.png", f"{model}: Triton throughput", levels, series,
                                        x_title="concurrency", y_title="inferences/s")))
    return charts


def run_suite(options: SuiteOptions) -> Path:
    if options.suite not in SUITES:
        raise ValueError(f"unknown suite {options.suite!r}; choose from {SUITES}")
    settings = options.resolved_settings()
    directory = run_dir(options.out, options.suite)
    _say(f"bench {options.suite}{' (quick)' if options.quick else ''}: writing {directory}")
    started = time.perf_counter()
    results: dict = {"suite": options.suite, "quick": options.quick, "settings": settings.to_dict(),
                     "machine": machine_info(), "notes": []}
    notes = results["notes"]
    try:
        if options.suite in ("e2e", "all"):
            results["served"], results["frontend_overhead"] = run_served(options, settings, directory, notes)
        if options.suite in ("e2e", "baseline", "all"):
            results["baseline"] = run_baseline(options, settings, notes)
        if options.suite in ("perf", "all"):
            results["perf"] = run_perf(options, settings, directory, notes)
    finally:
        from benchmarks.memory_plan import memory_plan, plan_markdown

        plan = memory_plan("bubogpt-7b", 2048)
        results["memory_plan"] = plan.to_dict()
        (directory / "memory_plan.md").write_text(plan_markdown(plan))
        results["duration_s"] = time.perf_counter() - started
        try:
            results["charts"] = draw_charts(directory, results)
        except Exception as exc:  # noqa: BLE001 - charts are a convenience; the numbers are in the JSON
            notes.append(f"charts failed: {type(exc).__name__}: {exc}")
        json_path, md_path = write_results(directory, results, f"BuboGPT benchmark: {options.suite}"
                                           + (" (quick)" if options.quick else ""))
        _say(f"bench {options.suite}: {md_path} ({results['duration_s']:.0f} s)")
    return directory
