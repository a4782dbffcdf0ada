"""Benchmarks: the load generator against a real stack, the baseline, the writers, the memory plan,
the PIL plotter and the GPU benchmark's code path. Checks that the numbers exist and agree with
each other, never timing thresholds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.inputs import KINDS, grounding_pair_requests, request_mix
from benchmarks.loadgen import run_sweep_async
from benchmarks.memory_plan import fit_count, kv_bytes_per_token, memory_plan
from benchmarks.request_stats import RequestRecord, percentile, summarize
from benchmarks.plot import bar_chart, line_chart
from benchmarks.report import evaluate_targets, write_results
from benchmarks.suites import batching_off_copy, strip_dynamic_batching
from bubogpt.config import get_preset
from serving.app import ServeOptions, Stack

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stack(loop, tmp_path_factory):
    # no grounding models in this repository: a quicker export, and the "n/a" path of the grounding metrics
    options = ServeOptions(port=0, metrics_port=None, http_port=0, cache_dir=tmp_path_factory.mktemp("cache"), grounding=False)
    stack = loop.run(Stack(options).start(), timeout=900)
    yield stack
    loop.run(stack.stop(grace_s=5), timeout=120)


def check_level(level: dict, concurrency: int) -> None:
    assert level["concurrency"] == concurrency
    assert level["errors"] == {} and level["completed"] == level["requests"] > 0
    assert level["ttft_ms"]["p50"] > 0 and level["ttft_ms"]["p99"] >= level["ttft_ms"]["p50"]
    assert level["itl_ms"]["p50"] > 0 and level["latency_ms"]["p50"] >= level["ttft_ms"]["p50"]
    assert level["requests_per_s"] > 0 and level["output_tokens_per_s"] > 0
    assert level["output_tokens"] == level["output_tokens_from_deltas"] > 0
    assert level["grounding_tail_ms"] is None
    for record in level["records"]:
        assert record["status"] == "OK" and record["finish_reason"] in ("stop", "length")
        assert record["usage_completion_tokens"] == record["tokens_from_deltas"]
        assert record["ttft"] > 0


def test_load_generator_against_the_real_stack(loop, stack):
    address = f"127.0.0.1:{stack.port}"
    # the client runs on the stack's own loop: grpc.aio stays on one event loop
    result = loop.run(run_sweep_async(
        address, concurrencies=[1, 2], per_client=2, min_requests=3, max_requests=4, time_cap_s=120,
        max_new_tokens=6, server_pid=os.getpid(), ground="auto", grounding_effect_requests=2, keep_records=True,
    ), timeout=300)
    assert [level["concurrency"] for level in result["levels"]] == [1, 2]
    for level, concurrency in zip(result["levels"], [1, 2]):
        check_level(level, concurrency)
        assert {r["kind"] for r in level["records"]} <= set(KINDS)
        assert level["memory"]["peak_rss_bytes"] > 0
    assert result["grounding"]["available"] is False and "no grounding" in result["grounding"]["note"]
    assert "on" not in result["grounding_effect"]
    memory = result["memory"]
    assert memory["peak_rss_bytes"] > 0 and "tritonserver" in memory["process_names"]


def test_load_generator_command_line(stack, tmp_path):
    out = tmp_path / "loadgen.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", "--server", f"127.0.0.1:{stack.port}", "--server-pid", str(os.getpid()),
         "--concurrency", "2", "--min-requests", "2", "--max-requests", "2", "--max-new-tokens", "4", "--no-warmup",
         "--ground", "off", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    level = result["levels"][0]
    assert level["completed"] == 2 and level["errors"] == {}
    assert level["output_tokens"] == level["output_tokens_from_deltas"]
    assert result["memory"]["peak_rss_bytes"] > 0


def test_baseline_serves_one_request_at_a_time():
    import asyncio

    from benchmarks.baseline import Baseline

    async def go():
        baseline = await Baseline(ground=False).start()
        try:
            requests = request_mix(3, seed=5, max_new_tokens=4)
            return await baseline.run_level(requests, concurrency=3, time_cap_s=120)
        finally:
            await baseline.stop()

    records, wall = asyncio.run(go())
    assert wall > 0 and len(records) == 3
    for record in records:
        assert record.ok and record.usage_completion_tokens == record.tokens_from_deltas > 0
    # a queue: every request starts after the previous one finished
    spans = sorted((r.first_token_s, r.done_s) for r in records)
    assert all(later[0] >= earlier[1] - 0.05 for earlier, later in zip(spans, spans[1:]))


def test_request_mix_is_fixed_and_seeded():
    first, again = request_mix(8, seed=3), request_mix(8, seed=3)
    assert first == again and request_mix(8, seed=4) != first
    assert [r.kind for r in first] == list(KINDS) * 2
    image, audio, both, follow_up = first[:4]
    assert image.image and not image.audio and audio.audio and not audio.image and both.image and both.audio
    assert follow_up.history and follow_up.image == image.image  # a follow-up about the same picture
    off, on = grounding_pair_requests(3, seed=0)
    assert len(off) == len(on) == 3 and all(r.image for r in off + on)
    assert not {r.image for r in off} & {r.image for r in on}


def test_summary_counts_and_percentiles():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 99) is None
    record = RequestRecord(0, "image", sent_s=10.0, first_token_s=10.1, done_s=10.5, delta_times=[10.1, 10.2, 10.4],
                           delta_tokens=[1, 2, 1], usage_completion_tokens=4, entity_times=[10.6])
    failed = RequestRecord(1, "audio", sent_s=10.0, status="UNAVAILABLE")
    summary = summarize([record, failed], concurrency=2, wall_s=1.0)
    assert summary["completed"] == 1 and summary["errors"] == {"UNAVAILABLE": 1}
    assert summary["output_tokens"] == summary["output_tokens_from_deltas"] == 4
    assert summary["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert summary["itl_ms"]["p50"] == pytest.approx(150.0)  # gaps 100 and 200 ms
    assert summary["grounding_tail_ms"]["p50"] == pytest.approx(200.0)
    assert summary["done_tail_ms"]["p50"] == pytest.approx(100.0)


def test_memory_plan_known_values():
    cfg = get_preset("bubogpt-7b")
    assert kv_bytes_per_token(cfg.llm) == 2 * 32 * 4096 * 2 == 524_288
    plan = memory_plan("bubogpt-7b", tokens=2048, grounding=False)
    assert plan.kv_bytes_per_token == 524_288
    assert plan.kv_bytes_per_request == 2048 * 524_288 == 2**30
    assert plan.params["llm"] == 6_738_415_616  # Vicuna-7B
    assert plan.weights_total_bytes == 2 * sum(plan.params.values())
    fixed = plan.weights_total_bytes + plan.activation_total_bytes
    for fit, gb in zip(plan.fits, (24, 80, 141)):
        assert fit.requests == int((gb * 1e9 * 0.9 - fixed) // 2**30)
    assert [fit.requests for fit in plan.fits] == [4, 51, 102]
    assert fit_count(10 * 2**30, 1.0, 2 * 2**30, 2**30) == 8


def test_writers_produce_json_markdown_and_targets(tmp_path):
    def level(c, rps, rss=None):
        records = [RequestRecord(i, "image", 0.0, 0.01, 0.1, [0.01, 0.02], [1, 1], 2, 2) for i in range(4)]
        s = summarize(records, c, wall_s=4 / rps)
        s["memory"] = {"peak_rss_bytes": rss, "peak_pss_bytes": None, "peak_gpu_bytes": None}
        return s

    results = {
        "suite": "e2e", "settings": {"quick": True},
        "served": {"levels": [level(1, 5.0, 2**30), level(16, 50.0, 3 * 2**30)], "grounding": {"note": "none"},
                   "grounding_effect": {"note": "server has no grounding models"}},
        "baseline": {"levels": [level(1, 5.0), level(16, 5.0)]},
        "frontend_overhead": {"grpc_ttft_ms": {"p50": 11.0, "mean": 11.0}, "engine_ttft_ms": {"p50": 10.0, "mean": 10.0},
                              "ratio": 1.1, "repeats": 3, "prompt": "text"},
        "perf": {"models": {"image_embed": {"batching_on": [{"concurrency": 1.0, "throughput": 10.0, "p50_us": 1e3, "p99_us": 2e3},
                                                            {"concurrency": 8.0, "throughput": 30.0, "p50_us": 1e3, "p99_us": 2e3}]}}},
        "memory_plan": memory_plan(grounding=False).to_dict(),
        "notes": ["a note"],
    }
    met = [row["met"] for row in evaluate_targets(results)]
    assert met == ["yes", "n/a", "yes", "yes", "yes", "info", "yes", "yes", "n/a"]
    json_path, md_path = write_results(tmp_path, results, "test run")
    data = json.loads(json_path.read_text())
    assert data["targets"][0]["ratio"] == pytest.approx(10.0)
    text = md_path.read_text()
    assert "| target | measured | ratio | met |" in text and "10.00x" in text and "a note" in text
    assert "served (gRPC)" in text and "Memory plan" in text


def test_plotter_writes_pngs(tmp_path):
    line = line_chart(tmp_path / "line.png", "requests/s", [1, 2, 4], {"served": [1.0, 2.0, None], "baseline": [1.0, 1.0, 1.0]},
                      y_title="req/s")
    bars = bar_chart(tmp_path / "bars.png", "throughput", [1, 8], {"on": [10.0, 30.0], "off": [10.0, 12.0]})
    for path in (line, bars):
        image = Image.open(path)
        assert image.format == "PNG" and image.size[0] > 300
        assert len(image.convert("RGB").getcolors(1 << 16)) > 3  # axes, text and data, not a blank canvas


def test_batching_off_copy_strips_only_the_networks(tmp_path):
    config = 'name: "x"\nmax_batch_size: 8\ndynamic_batching { preferred_batch_size: 4 max_queue_delay_microseconds: 2000 }\ninstance_group [ { count: 1 } ]\n'
    assert strip_dynamic_batching(config) == 'name: "x"\nmax_batch_size: 8\ninstance_group [ { count: 1 } ]\n'
    repo = tmp_path / "repo"
    for name, text in {"vision_encoder": config, "image_preprocess": config, "image_embed": 'platform: "ensemble"\n'}.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(text)
        (repo / name / "1" / "model.py").write_text("# model\n")
    out, changed = batching_off_copy(repo, tmp_path / "off")
    assert changed == ["vision_encoder"]
    assert "dynamic_batching" not in (out / "vision_encoder" / "config.pbtxt").read_text()
    assert "dynamic_batching" in (out / "image_preprocess" / "config.pbtxt").read_text()
    assert (out / "vision_encoder" / "1").is_symlink() and (out / "vision_encoder" / "1" / "model.py").is_file()


def test_gpu_bench_fails_fast_without_cuda_and_its_smoke_run_writes_results(tmp_path):
    import torch

    from benchmarks import gpu_bench

    if not torch.cuda.is_available():
        assert gpu_bench.main(["--out", str(tmp_path)]) == 2
        assert not any(tmp_path.iterdir())  # failed before building anything
    assert gpu_bench.main(["--smoke", "--out", str(tmp_path), "--models", "vision_encoder,sam_vit_h"]) == 0
    (run,) = tmp_path.glob("gpu-smoke-*")
    data = json.loads((run / "results.json").read_text())
    assert {r["model"] for r in data["results"]} == {"vision_encoder", "sam_vit_h"}
    assert all(r["items_per_s"] > 0 and not r["error"] for r in data["results"])
    assert (run / "results.md").is_file() and (run / "throughput.png").is_file()
