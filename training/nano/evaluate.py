"""`bubo eval`: a model's answers and grounding on held-out world seeds, scored by training.eval.

    bubo eval                                      # the built-in default on a fresh seed-1000 corpus
    bubo eval --model A --model B --tasks source,negative      # side by side (e.g. the ablation)
    bubo eval --server localhost:50051             # through a running `bubo serve` (bubo_cli/evaluate.py)

Predictions come from the PyTorch reference pipeline (greedy, the served template) and the PyTorch
grounding pipeline, or from the server's Chat stream (answer + grounded entities). The held-out corpus
is generated with `training.world.datasets` from `--seed` (never a training seed) into a cache folder.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from bubogpt.prompt import Turn
from training.prompts import AUDIO, IMAGE

log = logging.getLogger(__name__)

DEFAULT_EVAL_SEED = 1000
MAX_NEW_TOKENS = 160
# caption tasks have no instruction in the corpus (stage-1 format); served models are asked this
CAPTION_INSTRUCTIONS = {"caption": IMAGE[0], "audio_caption": AUDIO[0]}


def held_out_corpus(root: str | Path, seed: int = DEFAULT_EVAL_SEED, images: int = 200, progress: bool = False) -> Path:
    """A world corpus for evaluation (written once per seed and size, then reused)."""
    from training.world.datasets import write_corpus

    root = Path(root)
    manifest = root / "world.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        if info.get("seed") == seed and info.get("images", info.get("sizes", {}).get("images")) in (images, None):
            return root
    write_corpus(root, seed=seed, images=images, progress=progress)
    return root


def load_items(corpus: str | Path, tasks: Sequence[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    with open(Path(corpus) / "eval" / "items.jsonl") as handle:
        items = [json.loads(line) for line in handle if line.strip()]
    if tasks:
        items = [i for i in items if i["task"] in tasks]
    return items[:limit] if limit else items


def read_media(corpus: Path, ref: Any) -> bytes | None:
    """An eval item's image/audio field: a path in the corpus, or {"file": tar, "member": name}."""
    if ref is None:
        return None
    if isinstance(ref, Mapping):
        with tarfile.open(corpus / ref["file"]) as tar:
            member = tar.extractfile(ref["member"])
            assert member is not None
            return member.read()
    return (corpus / ref).read_bytes()


def instruction_of(item: Mapping[str, Any]) -> str:
    return item.get("instruction") or CAPTION_INSTRUCTIONS.get(item["task"], IMAGE[0])


Predictor = Callable[[str, bytes | None, bytes | None, bool], dict[str, Any]]


def reference_predictor(model_dir: str | Path | None = None, grounding: bool = True) -> Predictor:
    """Answers with the PyTorch reference pipeline; entities from the PyTorch grounding pipeline."""
    from PIL import Image

    from bubogpt.defaults import default_model_dir
    from bubogpt.grounding.pipeline import has_grounding, load_grounding
    from bubogpt.reference import ReferencePipeline

    directory = Path(model_dir) if model_dir else default_model_dir()
    pipeline = ReferencePipeline.from_dir(directory)
    grounder = load_grounding(directory) if grounding and has_grounding(directory) else None

    def predict(text: str, image: bytes | None, audio: bytes | None, ground: bool) -> dict[str, Any]:
        result = pipeline.generate([Turn("user", text)], image=image, audio=audio, max_new_tokens=MAX_NEW_TOKENS)
        prediction: dict[str, Any] = {"answer": result.text}
        if ground and grounder is not None and image is not None:
            found = grounder(Image.open(io.BytesIO(image)).convert("RGB"))
            prediction["entities"] = [{"label": e.label, "score": e.score, "box_xyxy": list(e.box_xyxy), "mask": e.mask}
                                      for e in found.entities]
        return prediction

    return predict


def predict_items(predict: Predictor, corpus: Path, items: Iterable[Mapping[str, Any]], ground: bool = True,
                  progress: bool = False, overlays: Path | None = None, max_overlays: int = 8) -> dict[str, dict[str, Any]]:
    """Predictions for every item; with `overlays`, the first `max_overlays` grounded images are saved
    there as mask overlays, and `answers.md` lists their questions, answers and references."""
    from tqdm import tqdm

    items = list(items)
    out = {}
    notes: list[str] = []
    for item in tqdm(items, desc="eval", disable=not progress, unit="item"):
        image, audio = read_media(corpus, item.get("image")), read_media(corpus, item.get("audio"))
        out[item["id"]] = prediction = predict(instruction_of(item), image, audio, ground)
        if overlays is not None and image is not None and "entities" in prediction and len(notes) < max_overlays:
            name = f"{len(notes):02d}-{item['task']}.png"
            save_prediction_overlay(image, prediction["entities"], overlays / name)
            notes.append(f"### {name}\n\n* question: {instruction_of(item)}\n* answer: {prediction['answer']}\n"
                         f"* reference: {item['reference']}\n")
    if overlays is not None and notes:
        (overlays / "answers.md").write_text("# Held-out answers and grounding\n\n" + "\n".join(notes))
    return out


def save_prediction_overlay(image: bytes, entities: Sequence[Mapping[str, Any]], path: Path) -> None:
    from bubogpt.grounding.overlay import save_overlay
    from bubogpt.grounding.schema import GroundedEntity
    from bubogpt.image import decode_image

    path.parent.mkdir(parents=True, exist_ok=True)
    grounded = [GroundedEntity(index=i, label=e["label"], score=float(e.get("score", 1.0)), box_xyxy=tuple(e["box_xyxy"]),
                               mask=e.get("mask")) for i, e in enumerate(entities)]
    save_overlay(decode_image(image), grounded, path)


def evaluate_model(predict: Predictor, corpus: Path, tasks: Sequence[str] | None = None, limit: int | None = None,
                   ground: bool = True, progress: bool = False, overlays: Path | None = None):
    from training.eval import evaluate

    items = load_items(corpus, tasks, limit)
    predictions = predict_items(predict, corpus, items, ground=ground, progress=progress, overlays=overlays)
    return evaluate(items, predictions), predictions


def side_by_side(columns: Mapping[str, Mapping[str, Any]], title: str, console=None) -> str:
    """One rich table: a row per metric, a column per model (printed on `console`); returns the text."""
    from rich.table import Table

    from training.eval import Metric

    table = Table(title=title)
    table.add_column("metric")
    names = sorted({m for metrics in columns.values() for m in metrics})
    for label in columns:
        table.add_column(label, justify="right")
    table.add_column("n", justify="right")
    for name in names:
        cells, count = [], ""
        for metrics in columns.values():
            m = metrics.get(name)
            if isinstance(m, Metric):
                cells.append("-" if m.value != m.value else f"{m.value:.3f}")
                count = str(m.count)
            elif m is None:
                cells.append("")
            else:
                cells.append(f"{float(m):.3f}")
        table.add_row(name, *cells, count)
    return show(table, width=120, console=console)


def show(table, width: int, console=None) -> str:
    """Prints a rich table (on `console`, default stdout) and returns its text (for reports written to files)."""
    from rich.console import Console

    recorder = Console(record=True, width=width, file=io.StringIO())
    recorder.print(table)
    (console or Console()).print(table)
    return recorder.export_text()


# What the built-in default is asked to reach on the held-out seed (issue 20); `bubo eval` prints each
# column against these, with what limits a missed one (TARGET_LIMITS, measured: docs/nano_default/).
TARGETS = {"caption.correct": 0.5, "qa.accuracy": 0.7, "grounding.f1": 0.8, "source.localisation": 0.8,
           "relation.accuracy": 0.9, "negative.invented_link": None}
# Measured on the committed default (2026-11-29 recipe) and on the full-size run of the 2026-12-02 variant
# (docs/nano_default/README.md, benchmarks/results/nano-default-20261202/).
TARGET_LIMITS = {
    "caption.correct": "vision encoder: held-out sketch slot accuracy 0.74, exact match 0.29; a wrong slot is a wrong word (steps and images did most of the gains so far)",
    "qa.accuracy": "the same sketch slots: a wrong colour or count slot becomes a confident wrong answer",
    "grounding.f1": "the detector: with a tagger that learns kinds (presence loss, tag F1 0.75) F1 stayed 0.48 in the 12-02 run; every kind is proposed here",
    "source.localisation": "the answer names the right kind (1.00) but detection of that object misses (grounding F1 0.47)",
    "relation.accuracy": "taught by the LLM's pre-training (stage 2 moves only projections); taught from words only, 500 stage-2 steps reached 0.64 and broke paired answers",
}


def targets_table(metrics: Mapping[str, Any], title: str, console=None) -> str:
    """One rich table: each target, the measured value, met or not, and what limits it (printed on
    `console`); returns the text."""
    from rich.table import Table

    from training.eval import Metric

    table = Table(title=title)
    for column, justify in (("metric", "left"), ("target", "right"), ("measured", "right"), ("n", "right"), ("met", "center"),
                            ("what limits it", "left")):
        table.add_column(column, justify=justify)
    for name, target in TARGETS.items():
        m = metrics.get(name)
        value = m.value if isinstance(m, Metric) else (float(m) if m is not None else float("nan"))
        count = str(m.count) if isinstance(m, Metric) else ""
        if target is None:  # reported, no target: the rate the ablation compares
            met = ""
        else:
            met = "yes" if value == value and value >= target else "no"
        table.add_row(name, "" if target is None else f">= {target:.2f}", "-" if value != value else f"{value:.3f}", count, met,
                      TARGET_LIMITS.get(name, "") if met == "no" else "")
    return show(table, width=160, console=console)


def metrics_json(metrics: Mapping[str, Any]) -> dict[str, Any]:
    from training.eval import Metric

    return {k: ({"value": round(m.value, 4), "n": m.count} if isinstance(m, Metric) else m) for k, m in sorted(metrics.items())}
