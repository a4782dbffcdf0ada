"""The baseline: what the original demo does, on the same model and the same requests.

Per request, in one process: decode + encode the image/audio with PyTorch (no embedding cache, a
follow-up turn encodes its picture again), generate greedily with the plain PyTorch engine
(`serving.llm_engine.TorchEngine`: HF model, KV cache within the request, no batching), then, for
requests with an image, grounding after the answer (`bubogpt.grounding.pipeline`: RAM tags ->
Grounding DINO boxes -> SAM masks in PyTorch) and entity matching (the server's rule matcher).
Requests are served strictly one at a time: a "concurrency" level here is c clients queueing in
front of that single server, so queueing shows up in TTFT and latency and requests/s stays that of
one request at a time. Measured with the same records and metrics as the gRPC load generator
(benchmarks/request_stats.py).

Grounding is measured on its own, as on the served side: the concurrency levels compare the chat
path (no grounding on either side, unless `--ground-levels`), and a few image requests then run
one at a time without and with grounding. Without grounding models in the model directory that
step is skipped, with a note in the results.

    python -m benchmarks.baseline --concurrency 1,4,16 --json baseline.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from benchmarks.inputs import BenchRequest, level_requests, requests_per_level, warmup_requests
from benchmarks.memory import MemorySampler
from benchmarks.request_stats import RequestRecord, summarize

GROUNDING_SKIPPED = ("grounding skipped: the model directory has no grounding models "
                     "(the demo runs RAM -> Grounding DINO -> SAM after the answer, sequentially)")
GROUNDING_ON = ("grounding: PyTorch RAM -> Grounding DINO -> SAM after each answer with an image, then the rule "
                "entity matcher, sequentially (as the demo)")


class Baseline:
    """Encoders (PyTorch) + TorchEngine for one model directory; `await start()`, then `serve()`."""

    def __init__(self, model_dir: str | Path | None = None, ground: bool = True):
        self.model_dir = model_dir
        self.ground = ground
        self.grounding = None  # bubogpt.grounding.pipeline.GroundingPipeline when present
        self.matcher = None
        self.model = None
        self.engine = None
        self._lock: asyncio.Lock | None = None

    async def start(self) -> "Baseline":
        from bubogpt.weights import llm_dir, load_model
        from serving.llm_engine import TorchEngine

        if self.model_dir is None:
            from bubogpt.defaults import default_model_dir

            self.model_dir = default_model_dir()
        self.model = (await asyncio.to_thread(load_model, self.model_dir)).eval()
        self.config = self.model.config
        self.engine = TorchEngine(llm_dir(self.model_dir), self.config.vision_qformer.num_queries)
        await self.engine.start()
        if self.ground:
            from bubogpt.grounding.matching import RuleEntityMatcher
            from bubogpt.grounding.pipeline import has_grounding, load_grounding

            if has_grounding(self.model_dir):
                self.grounding = await asyncio.to_thread(load_grounding, self.model_dir)
                self.matcher = RuleEntityMatcher()
        self._lock = asyncio.Lock()
        return self

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        self.engine = self.model = self.grounding = None

    @property
    def grounding_note(self) -> str:
        if not self.ground:
            return "grounding off (not requested)"
        return GROUNDING_ON if self.grounding is not None else GROUNDING_SKIPPED

    def ground_and_match(self, image: bytes, answer: str) -> int:
        """Grounding + entity matching for one answer; returns the number of matched entities."""
        from bubogpt.image import decode_image

        result = self.grounding(decode_image(image))
        return len(self.matcher.match(answer, [e.label for e in result.entities]))

    def encode(self, request: BenchRequest):
        import torch

        from bubogpt.audio_features import audio_bytes_to_clips
        from bubogpt.image import image_bytes_to_pixels
        from serving.llm_engine import ModalityEmbeds

        items = []
        with torch.inference_mode():
            if request.image:
                pixels = image_bytes_to_pixels(request.image, self.config.vision)
                items.append(ModalityEmbeds("image", self.model.embed_image(pixels[None])[0]))
            if request.audio:
                clips = audio_bytes_to_clips(request.audio, self.config.audio)
                items.append(ModalityEmbeds("audio", self.model.embed_audio(clips[None])[0]))
        return items

    async def serve(self, request: BenchRequest, record: RequestRecord, ground: bool = False) -> RequestRecord:
        """One request, start to finish, while holding the single server (the queue is the lock)."""
        from bubogpt.prompt import Turn
        from serving.llm_engine import Finished, SamplingOptions

        async with self._lock:
            try:
                modalities = await asyncio.to_thread(self.encode, request)
                turns = [Turn(role, text) for user, assistant in request.history
                         for role, text in (("user", user), ("assistant", assistant))]
                turns.append(Turn("user", request.text))
                sampling = SamplingOptions(temperature=0.0, max_new_tokens=request.max_new_tokens)
                answer = ""
                async for event in self.engine.generate(turns, modalities, sampling):
                    now = time.perf_counter()
                    if isinstance(event, Finished):
                        answer = event.text
                        record.finish_reason = event.finish_reason
                        record.usage_prompt_tokens = event.prompt_tokens
                        record.usage_completion_tokens = event.completion_tokens
                    elif event.token_ids:
                        if record.first_token_s is None:
                            record.first_token_s = now
                        record.delta_times.append(now)
                        record.delta_tokens.append(len(event.token_ids))
                if ground and self.grounding is not None and request.image:
                    matched = await asyncio.to_thread(self.ground_and_match, request.image, answer)
                    record.entity_times.extend([time.perf_counter()] * matched)
                record.done_s = time.perf_counter()
            except Exception as exc:  # noqa: BLE001 - counted as an error of the level, like a failed RPC
                record.status, record.error = "INTERNAL", f"{type(exc).__name__}: {exc}"
        return record

    async def run_level(self, requests: list[BenchRequest], concurrency: int, time_cap_s: float,
                        grace_s: float = 60.0, ground: bool = False) -> tuple[list[RequestRecord], float]:
        pending = iter(requests)
        records: list[RequestRecord] = []
        start = time.perf_counter()
        deadline = start + time_cap_s

        async def client() -> None:
            for request in pending:
                if time.perf_counter() >= deadline:
                    return
                record = RequestRecord(request.index, request.kind, sent_s=time.perf_counter())
                records.append(record)
                await self.serve(request, record, ground)

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        _, late = await asyncio.wait(tasks, timeout=time_cap_s + grace_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
        for record in records:
            if record.done_s is None and record.status == "OK":
                record.status, record.error = "CLIENT_TIME_CAP", "still queued or running at the level's time cap"
        ends = [r.done_s for r in records if r.done_s is not None]
        return records, (max(ends) if ends else time.perf_counter()) - start


async def run_baseline_sweep_async(
    concurrencies=(1, 2, 4, 8, 16, 32),
    per_client: int = 4,
    min_requests: int = 8,
    max_requests: int = 64,
    time_cap_s: float = 60.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    model_dir: str | Path | None = None,
    ground_levels: bool = False,
    grounding_effect_requests: int = 3,
    warmup: bool = True,
    keep_records: bool = False,
    log=None,
) -> dict:
    """The baseline at each level (grounding in the levels only with `ground_levels`), then, when the
    model has grounding models, `grounding_effect_requests` image requests one at a time without and
    with grounding: what grounding adds to the demo's latency."""
    from benchmarks.loadgen import level_line, measure_grounding_effect

    log = log or (lambda *_: None)
    baseline = await Baseline(model_dir, ground=True).start()
    available = baseline.grounding is not None
    sampler = MemorySampler(exclude_self=False).start()
    result: dict = {"settings": {"concurrency": list(concurrencies), "per_client": per_client, "min_requests": min_requests,
                                 "max_requests": max_requests, "time_cap_s": time_cap_s, "max_new_tokens": max_new_tokens,
                                 "seed": seed, "ground_levels": ground_levels},
                    "grounding": {"available": available, "note": baseline.grounding_note,
                                  "levels_ground_image_requests": ground_levels and available}}
    try:
        if warmup:
            for request in warmup_requests(seed):
                await baseline.serve(request, RequestRecord(-1, request.kind, time.perf_counter()), ground=ground_levels)
        sampler.mark()
        levels = []
        for concurrency in concurrencies:
            count = requests_per_level(concurrency, per_client, min_requests, max_requests)
            requests = level_requests(concurrency, count, seed, max_new_tokens)
            records, wall = await baseline.run_level(requests, concurrency, time_cap_s, ground=ground_levels)
            summary = summarize(records, concurrency, wall)
            summary["memory"] = sampler.mark()
            if keep_records:
                summary["records"] = [r.to_dict() for r in records]
            levels.append(summary)
            log(level_line("baseline", summary))
        result["levels"] = levels
        effect = {"concurrency": 1, "available": available, "note": baseline.grounding_note}
        if available and grounding_effect_requests:
            effect.update(await measure_grounding_effect(
                lambda requests, concurrency, cap, ground: baseline.run_level(requests, concurrency, cap, ground=ground),
                "baseline", grounding_effect_requests, seed, max_new_tokens, time_cap_s, log))
        result["grounding_effect"] = effect
    finally:
        sampler.stop()
        result["memory"] = sampler.summary()
        await baseline.stop()
    return result


def run_baseline_sweep(**kwargs) -> dict:
    return asyncio.run(run_baseline_sweep_async(**kwargs))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.loadgen import parse_levels

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="model directory (default: the built-in nano model)")
    parser.add_argument("--concurrency", type=parse_levels, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=64)
    parser.add_argument("--time-cap", type=float, default=60.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ground-levels", action="store_true", help="ground image requests in every level (slow on CPU)")
    parser.add_argument("--grounding-effect-requests", type=int, default=3,
                        help="image requests run without and with grounding, one at a time (0: skip)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    result = run_baseline_sweep(
        ground_levels=args.ground_levels, grounding_effect_requests=args.grounding_effect_requests,
        concurrencies=args.concurrency, per_client=args.per_client, min_requests=args.min_requests,
        max_requests=args.max_requests, time_cap_s=args.time_cap, max_new_tokens=args.max_new_tokens, seed=args.seed,
        model_dir=args.weights, log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    text = json.dumps(result, indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
