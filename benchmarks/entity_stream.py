"""Phrase -> mask: how soon after its phrase is written each grounded entity (box and mask) reaches the
client. `bubo bench --suite entities`.

Side by side in one run, the same requests against two `bubo serve` processes on the built-in model:
entities sent as their phrases are written (the default) and `--no-incremental-entities` (every entity
after the last token, as before). World pictures with three to five objects, "Describe the picture in
detail.", greedy, one pass per setting:

* fresh      new pictures at c=1: grounding runs while the answer is written
* grounded   the same pictures again at c=1: the grounding result is cached, so what is left of
             phrase -> mask is the matching and the stream itself (the issue's target: p50 < 50 ms)
* c=4        the same pictures again with four clients

Phrase -> mask is measured twice: as the client saw it (arrival of the delta that completed the phrase
-> arrival of the entity event) and as the server reports it (`Done.entity_timings`). Both servers must
send the same entities for the same answers; the run says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.request_stats import percentile
from serving.client import chat_request
from serving.proto import bubo_pb2_grpc

log = logging.getLogger(__name__)

QUESTION = "Describe the picture in detail."
SERVERS = {"incremental": [], "after the answer": ["--no-incremental-entities"]}


@dataclass
class EntitySettings:
    images: int = 16
    max_new_tokens: int = 96
    concurrency: int = 4
    seed: int = 0

    @classmethod
    def quick(cls) -> "EntitySettings":
        return cls(images=4, max_new_tokens=64)


@dataclass
class Answer:
    image: int
    text: str = ""
    entities: list[tuple] = field(default_factory=list)  # (start, end, label)
    client_ms: list[float] = field(default_factory=list)  # per entity: phrase's delta -> entity event
    server_ms: list[float] = field(default_factory=list)  # per entity: Done.entity_timings
    before_end: list[bool] = field(default_factory=list)
    last_token_to_last_mask_ms: float | None = None


def pictures(settings: EntitySettings) -> list[bytes]:
    from training.world import derive_seed
    from training.world.scene import make_scene

    return [make_scene(derive_seed("entity-bench", "image", settings.seed, i), n_objects=3 + i % 3).jpeg()
            for i in range(settings.images)]


async def ask(stub, index: int, image: bytes, max_new_tokens: int) -> Answer:
    answer = Answer(index)
    reached: list[tuple[int, float]] = []  # (answer length, when its delta arrived)
    last_delta = None
    async for event in stub.Chat(chat_request(QUESTION, image, ground=True, max_new_tokens=max_new_tokens), timeout=600):
        now = time.perf_counter()
        kind = event.WhichOneof("event")
        if kind == "delta" and event.delta.text:
            answer.text += event.delta.text
            reached.append((len(answer.text), now))
            last_delta = now
        elif kind == "entity":
            entity = event.entity
            answer.entities.append((entity.start, entity.end, entity.label))
            written = next(when for length, when in reached if length >= entity.end)
            answer.client_ms.append((now - written) * 1e3)
            answer.last_token_to_last_mask_ms = (now - last_delta) * 1e3
        elif kind == "done":
            answer.server_ms = [t.after_phrase_ms for t in event.done.entity_timings]
            answer.before_end = [t.before_answer_end for t in event.done.entity_timings]
    return answer


async def run_pass(address: str, images: list[bytes], concurrency: int, max_new_tokens: int) -> tuple[list[Answer], float]:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = bubo_pb2_grpc.BuboStub(channel)
        queue = list(enumerate(images))
        answers: list[Answer] = []

        async def client() -> None:
            while queue:
                index, image = queue.pop(0)
                answers.append(await ask(stub, index, image, max_new_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return sorted(answers, key=lambda a: a.image), time.perf_counter() - start


def summarize(answers: list[Answer], wall_s: float) -> dict:
    client = [ms for a in answers for ms in a.client_ms]
    server = [ms for a in answers for ms in a.server_ms]
    early = sum(b for a in answers for b in a.before_end)
    tails = [a.last_token_to_last_mask_ms for a in answers if a.last_token_to_last_mask_ms is not None]
    return {
        "requests": len(answers), "wall_s": wall_s, "entities": len(client),
        "before_answer_end": early, "before_answer_end_share": early / len(client) if client else None,
        "client_phrase_to_mask_ms": {"p50": percentile(client, 50), "p99": percentile(client, 99)},
        "server_phrase_to_mask_ms": {"p50": percentile(server, 50), "p99": percentile(server, 99)},
        "last_token_to_last_mask_ms": {"p50": percentile(tails, 50), "p99": percentile(tails, 99)},
        "answer_chars_mean": sum(len(a.text) for a in answers) / len(answers) if answers else None,
    }


def run_server(name: str, extra_args: list[str], directory: Path, images: list[bytes], settings: EntitySettings,
               cache_dir: Path) -> dict:
    from benchmarks.serve_process import ServeProcess

    server = ServeProcess(cache_dir, directory / f"serve-{name.replace(' ', '-')}.log", extra_args).start()
    print(f"entities: `bubo serve {' '.join(extra_args)}` up on {server.address}", file=sys.stderr, flush=True)
    try:
        asyncio.run(run_pass(server.address, images[:1], 1, 8))  # warm-up: first-call costs, not measured
        passes, answers = {}, {}
        for label, concurrency in (("fresh", 1), ("grounded", 1), (f"c={settings.concurrency}", settings.concurrency)):
            got, wall = asyncio.run(run_pass(server.address, images, concurrency, settings.max_new_tokens))
            passes[label] = summarize(got, wall)
            answers[label] = [{"image": a.image, "text": a.text, "entities": a.entities, "client_ms": a.client_ms,
                               "server_ms": a.server_ms, "before_answer_end": a.before_end} for a in got]
            log.info("%s, %s: %s", name, label, passes[label])
    finally:
        server.stop()
    return {"command": " ".join(server.command()), "passes": passes, "answers": answers}


def compare(results: dict) -> dict:
    """Did both servers send the same entities (spans and labels) for the same answers?"""
    first, second = (results[name]["answers"]["grounded"] for name in SERVERS)
    same_text = sum(a["text"] == b["text"] for a, b in zip(first, second))
    same_entities = sum(a["text"] == b["text"] and sorted(map(tuple, a["entities"])) == sorted(map(tuple, b["entities"]))
                        for a, b in zip(first, second))
    return {"answers": len(first), "same_text": same_text, "same_entities_where_same_text": same_entities}


def markdown(result: dict) -> str:
    def ms(value) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    lines = ["# Phrase -> mask: entities while the answer is written", "",
             f"{result['settings']['images']} world pictures (3-5 objects), \"{QUESTION}\", greedy, "
             f"{result['settings']['max_new_tokens']} new tokens at most; both servers in one run.", "",
             "| server | pass | entities | sent before the answer ended | phrase -> mask p50 / p99 (client) | "
             "(server) | last token -> last mask p50 / p99 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in SERVERS:
        for label, s in result["servers"][name]["passes"].items():
            c, v, t = s["client_phrase_to_mask_ms"], s["server_phrase_to_mask_ms"], s["last_token_to_last_mask_ms"]
            share = f"{s['before_answer_end']} ({100 * s['before_answer_end_share']:.0f}%)" if s["entities"] else "0"
            lines.append(f"| {name} | {label} | {s['entities']} | {share} | {ms(c['p50'])} / {ms(c['p99'])} ms | "
                         f"{ms(v['p50'])} / {ms(v['p99'])} ms | {ms(t['p50'])} / {ms(t['p99'])} ms |")
    same = result["same"]
    lines += ["", f"Same answers from both servers: {same['same_text']} of {same['answers']}; of those, the same entities: "
              f"{same['same_entities_where_same_text']}.", ""]
    on, off = (result["servers"][name]["passes"]["grounded"]["client_phrase_to_mask_ms"]["p50"] for name in SERVERS)
    if on and off:
        lines.append(f"Phrase -> mask p50 with grounding finished, after-the-answer / incremental: {off / on:.1f}x.")
    return "\n".join(lines) + "\n"


def draw(path: Path, result: dict) -> None:
    from benchmarks.plot import _figure, _save

    plt, figure, axes = _figure("phrase -> mask as the client sees it (grounding finished before, c=1)",
                                "ms after the phrase's delta", "share of entities")
    for name, style in zip(SERVERS, ("-", "--")):
        values = sorted(ms for a in result["servers"][name]["answers"]["grounded"] for ms in a["client_ms"])
        if values:
            axes.step(values, [(k + 1) / len(values) for k in range(len(values))], style, where="post", label=name)
    axes.set_xscale("symlog", linthresh=10)
    _save(plt, figure, axes, path, legend=True)


def main_entities(out_root: Path, settings: EntitySettings, cache_dir: Path | None = None) -> Path:
    from benchmarks.report import git_commit, machine_info, run_dir

    directory = run_dir(out_root, "entities")
    cache = cache_dir or Path.home() / ".cache" / "bubogpt"
    images = pictures(settings)
    servers = {name: run_server(name, args, directory, images, settings, cache) for name, args in SERVERS.items()}
    result = {"settings": settings.__dict__, "servers": servers, "machine": machine_info(), "commit": git_commit()}
    result["same"] = compare(servers)
    (directory / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    try:
        draw(directory / "phrase_to_mask.png", result)
        text += "\n![phrase -> mask](phrase_to_mask.png)\n"
    except Exception as exc:  # noqa: BLE001 - the chart is a convenience; the numbers are in the JSON
        log.warning("chart failed: %s", exc)
    text += f"\nCommand: `bubo bench --suite entities` ({settings.images} images).\n\nMachine: {json.dumps(result['machine'])}\n"
    (directory / "results.md").write_text(text)
    return directory
