"""The compute bound of the e2e mix (issue 14): what the work of one request costs when every network runs
in one process, at the batch sizes the served stack reaches at concurrency 16, added up per request.

    python -m benchmarks.compute_bound                        # nano, the e2e level's 64 requests at c=16
    python -m benchmarks.compute_bound --served results/e2e-*/results.json   # + the fraction the served stack reached

The same requests as the e2e suite's c=16 level (benchmarks/inputs.py) and the same implementations as
the served stack, without Triton, its python-backend hops and the gRPC frontend:
  image / audio front end   decode + preprocess per item (the python-backend models' code, their settings)
  encoders + Q-Formers      the repository's ONNX files in ONNX Runtime, in batches of --encoder-batch
                            (Triton's statistics at c=16: batches of 3 to 4); a picture sent again
                            (the multi-turn follow-up) is not encoded again, as the served cache does
  LLM                       VLLMEngine (the served engine class and route) with the embeddings computed
                            above, all requests at --concurrency: prefill and decode steps as batched
                            by vLLM's scheduler
Stages run one after another on the whole machine, so the sum per request is what the machine's cores
cost per request with no overhead: requests/s <= requests / sum. The served stack's requests/s at the
same level, divided by that, is the fraction of the bound it reaches.
Writes results/compute-bound-<ts>/ (results.json, README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def front_end(repo: Path, modality: str):
    """The front end the repository's model for `modality` runs, with its settings (either layout)."""
    from bubogpt.onnx_embedder import FrontEnd
    from export.repository import EMBEDDING_MODELS, network_settings

    if json.loads((repo / "bubo_repository.json").read_text()).get("fused_embeds", False):
        settings = network_settings(repo, EMBEDDING_MODELS[modality][2])  # the fused model's, beside its encoder
    else:
        settings = json.loads((repo / f"{modality}_preprocess" / "1" / "bubo.json").read_text())
    return FrontEnd.from_settings(modality, settings), settings


class Stages:
    """Seconds spent per stage, summed over the level's requests."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.items: dict[str, int] = {}

    def add(self, stage: str, seconds: float, items: int = 1) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.items[stage] = self.items.get(stage, 0) + items


def encode_all(requests, repo: Path, encoder_batch: int, stages: Stages) -> dict[bytes, np.ndarray]:
    """Embeddings of every distinct picture and sound of `requests`, keyed by content hash."""
    import torch

    from bubogpt.onnx_embedder import OnnxEmbedder
    from export.repository import EMBEDDING_MODELS, network_onnx, network_settings

    embedders, networks = {}, {}
    for modality, (_, _, encoder, qformer) in EMBEDDING_MODELS.items():
        front, settings = front_end(repo, modality)
        # the thread settings the served model has (the fused model's, or the network's own)
        threads = network_settings(repo, encoder)
        embedders[modality] = OnnxEmbedder(front, network_onnx(repo, encoder), network_onnx(repo, qformer),
                                           intra_op_threads=int(threads.get("intra_op_threads", 0)),
                                           allow_spinning=bool(threads.get("allow_spinning", False)))
        networks[modality] = (encoder, qformer)
        if modality == "audio":
            torch.set_num_threads(int(settings.get("torch_threads", 1)))  # as the served audio front end runs

    inputs: dict[str, dict[bytes, np.ndarray]] = {"image": {}, "audio": {}}
    for request in requests:
        for modality, data in (("image", request.image), ("audio", request.audio)):
            key = hashlib.sha256(data).digest()
            if not data or key in inputs[modality]:
                continue
            start = time.perf_counter()
            array = embedders[modality].front_end(data)
            stages.add(f"{modality} front end", time.perf_counter() - start)
            inputs[modality][key] = array

    embeds: dict[bytes, np.ndarray] = {}
    for modality, (encoder, qformer) in networks.items():
        keys = list(inputs[modality])
        for lo in range(0, len(keys), encoder_batch):
            batch = np.stack([inputs[modality][k] for k in keys[lo:lo + encoder_batch]])
            start = time.perf_counter()
            features = embedders[modality].encode(batch)
            middle = time.perf_counter()
            out = embedders[modality].project(features)
            stages.add(f"{encoder} (ONNX Runtime)", middle - start, len(batch))
            stages.add(f"{qformer} (ONNX Runtime)", time.perf_counter() - middle, len(batch))
            embeds.update(zip(keys[lo:lo + encoder_batch], out))
    return embeds


async def generate_all(requests, embeds, llm_dir: Path, num_queries: int, concurrency: int, stages: Stages) -> dict:
    import torch

    from bubogpt.prompt import Turn
    from serving.llm_engine import Finished, ModalityEmbeds, SamplingOptions, VLLMEngine

    engine = VLLMEngine(llm_dir, num_queries, restart_on_failure=False)
    await engine.start()
    tokens = {"prompt": 0, "completion": 0}
    semaphore = asyncio.Semaphore(concurrency)

    async def one(request) -> None:
        modalities = [ModalityEmbeds(m, torch.from_numpy(embeds[hashlib.sha256(data).digest()]))
                      for m, data in (("image", request.image), ("audio", request.audio)) if data]
        turns = [Turn(role, text) for user, assistant in request.history for role, text in (("user", user), ("assistant", assistant))]
        turns.append(Turn("user", request.text))
        async with semaphore:
            async for event in engine.generate(turns, modalities, SamplingOptions(temperature=0.0, max_new_tokens=request.max_new_tokens)):
                if isinstance(event, Finished):
                    tokens["prompt"] += event.prompt_tokens
                    tokens["completion"] += event.completion_tokens

    try:
        await asyncio.gather(*(one(r) for r in requests[:concurrency]))  # warm-up, not counted
        tokens.update(prompt=0, completion=0)
        start = time.perf_counter()
        await asyncio.gather(*(one(r) for r in requests))
        stages.add(f"LLM prefill + decode (vLLM, c={concurrency})", time.perf_counter() - start, len(requests))
    finally:
        await engine.stop()
    return tokens


def served_rps(path: Path, concurrency: int) -> float | None:
    levels = json.loads(path.read_text())["served"]["levels"]
    for level in levels:
        if int(level.get("concurrency", -1)) == concurrency:
            return float(level["requests_per_s"])
    return None


def main(argv: list[str] | None = None) -> int:
    from benchmarks.inputs import level_requests, requests_per_level
    from benchmarks.suites import SuiteSettings
    from bubogpt.weights import read_config
    from bubogpt.defaults import default_model_dir
    from serving.app import ServeOptions, ensure_repository

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="model directory (default: the built-in nano model)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, help="default: the e2e suite's count for the level")
    parser.add_argument("--encoder-batch", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--served", type=Path, help="an e2e run's results.json: the served requests/s at the level")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/compute-bound-<ts>/)")
    args = parser.parse_args(argv)
    model_dir = Path(args.weights) if args.weights else default_model_dir()
    cfg = read_config(model_dir)
    e2e = SuiteSettings()
    count = args.requests or requests_per_level(args.concurrency, e2e.per_client, e2e.min_requests, e2e.max_requests)
    requests = level_requests(args.concurrency, count, seed=args.seed, max_new_tokens=args.max_new_tokens)
    repo = ensure_repository(model_dir, ServeOptions(weights=model_dir))

    stages = Stages()
    embeds = encode_all(requests, repo, args.encoder_batch, stages)
    tokens = asyncio.run(generate_all(requests, embeds, model_dir / "llm", cfg.vision_qformer.num_queries, args.concurrency, stages))
    total = sum(stages.seconds.values())
    bound = count / total
    record = {"model": str(model_dir), "concurrency": args.concurrency, "requests": count, "encoder_batch": args.encoder_batch,
              "tokens": tokens, "stages": {k: {"seconds": round(v, 4), "items": stages.items[k], "ms_per_request": round(v / count * 1e3, 2)}
                                           for k, v in stages.seconds.items()},
              "ms_per_request": round(total / count * 1e3, 2), "bound_requests_per_s": round(bound, 2)}
    if args.served:
        rps = served_rps(args.served, args.concurrency)
        record["served"] = {"results": str(args.served), "requests_per_s": rps, "fraction_of_bound": round(rps / bound, 3) if rps else None}

    out = args.out or ROOT / "benchmarks" / "results" / f"compute-bound-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Compute bound, e2e mix at c={args.concurrency} ({count} requests, {model_dir.name})", "",
             f"`python -m benchmarks.compute_bound {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| stage | items | ms per request |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['items']} | {v['ms_per_request']} |" for k, v in record["stages"].items()]
    lines += [f"| **sum** | | **{record['ms_per_request']}** |", "",
              f"Bound: {bound:.2f} requests/s; {tokens['completion']} tokens generated ({tokens['prompt']} prompt tokens)."]
    if "served" in record:
        lines.append(f"Served at the same level: {record['served']['requests_per_s']:.2f} requests/s = "
                     f"{record['served']['fraction_of_bound']:.0%} of the bound.")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
