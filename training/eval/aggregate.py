"""All the scores over a corpus's eval items (eval/items.jsonl), their table, and the command line.

    python -m training.eval --items data/world_eval/eval/items.jsonl --predictions preds.jsonl
    python -m training.eval --items data/world_eval/eval/items.jsonl --reference    # the truth scores 1.0
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from training.eval.audio import score_audio
from training.eval.grounding import GroundingScore, localisation_hit, score_grounding
from training.eval.pairs import classify_relation, relation_accuracy, score_source_answer
from training.eval.parsing import split_pair_answer
from training.eval.text import score_answer, score_text


@dataclass
class Metric:
    total: float = 0.0
    count: int = 0

    def add(self, value: float | bool | None) -> None:
        if value is None:
            return
        self.total += float(value)
        self.count += 1

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


class Metrics(dict):
    """name -> Metric, created on first use."""

    def add(self, name: str, value: float | bool | None) -> None:
        self.setdefault(name, Metric()).add(value)

    def summary(self) -> dict[str, float]:
        return {name: metric.value for name, metric in sorted(self.items())}


def evaluate(items: Iterable[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]], iou_threshold: float = 0.5) -> Metrics:
    """Scores predictions ({id: {"answer", "entities"?}}) on eval items (eval/items.jsonl of a corpus).

    Items without a prediction are counted in "missing". Grounding is scored on items whose
    prediction has "entities" (micro-averaged precision / recall over all of them).
    """
    metrics = Metrics()
    grounding = GroundingScore(0, 0, 0, [], [])
    for item in items:
        prediction = predictions.get(item["id"])
        metrics.add("missing", prediction is None)
        if prediction is None:
            continue
        answer = str(prediction.get("answer", ""))
        truth = item["truth"]
        task = item["task"]
        scene = truth.get("scene")
        if task in ("caption", "describe"):
            s = score_text(answer, scene)
            metrics.add(f"{task}.correct", s.correct)
            metrics.add(f"{task}.complete", s.complete)
            metrics.add(f"{task}.kind_precision", s.kind_precision)
            metrics.add(f"{task}.kind_recall", s.kind_recall)
            metrics.add(f"{task}.color_accuracy", s.color_accuracy)
            metrics.add(f"{task}.count_accuracy", s.count_accuracy)
        elif task == "qa":
            ok = score_answer(answer, truth["qa"]["type"], truth["qa"]["facts"])
            metrics.add("qa.accuracy", ok)
            metrics.add(f"qa.{truth['qa']['type']}", ok)
        elif task in ("audio", "audio_caption"):
            s = score_audio(answer, truth["sound"])
            metrics.add(f"{task}.kind_accuracy", s.kind_correct)
            metrics.add(f"{task}.count_accuracy", s.count_correct)
        elif task in ("source", "negative"):
            metrics.add("relation.accuracy", relation_accuracy([(answer, truth["related"])]))
            if truth["related"]:
                s = score_source_answer(answer, truth["source"])
                metrics.add("source.answer_accuracy", s.correct)
                metrics.add("source.kind_accuracy", s.kind)
                if "entities" in prediction:
                    metrics.add("source.localisation", localisation_hit(prediction["entities"], truth["source"], iou_threshold))
            else:
                # the paper's failure without negative pairs: a link invented between unrelated inputs
                metrics.add("negative.invented_link", classify_relation(answer) == "related")
                image_part, audio_part = split_pair_answer(answer)
                metrics.add("negative.image_correct", score_text(image_part, scene).correct)
                metrics.add("negative.audio_kind_accuracy", score_audio(audio_part, truth["sound"]).kind_correct)
        if scene is not None and "entities" in prediction:
            grounding = grounding + score_grounding(prediction["entities"], scene, iou_threshold)
            metrics.add("grounding.images", 1)
    g = grounding
    for name, value, n in (("precision", g.precision, g.tp + g.fp), ("recall", g.recall, g.tp + g.fn), ("f1", g.f1, g.tp + g.fn),
                           ("box_iou", g.mean_box_iou, len(g.box_ious)), ("mask_iou", g.mean_mask_iou, len(g.mask_ious))):
        if n and value == value:  # not NaN
            metrics[f"grounding.{name}"] = Metric(value * n, n)
    return metrics


def reference_predictions(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The corpus's own answers and true objects as predictions (a perfect model; scores 1.0)."""
    out = {}
    for item in items:
        prediction: dict[str, Any] = {"answer": item["reference"]}
        scene = item["truth"].get("scene")
        if scene is not None:
            prediction["entities"] = [{"label": o["kind"], "box_xyxy": o["visible_box_xyxy"], "mask": o["mask"]} for o in scene["objects"]]
        out[item["id"]] = prediction
    return out


def format_table(metrics: Mapping[str, Any], title: str = "world evaluation"):
    """A rich Table of metric, value, n (Metric objects or plain numbers)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    for name in sorted(metrics):
        m = metrics[name]
        value, count = (m.value, m.count) if isinstance(m, Metric) else (float(m), None)
        table.add_row(name, "-" if value != value else f"{value:.3f}", "" if count is None else str(count))
    return table


def print_table(metrics: Mapping[str, Any], title: str = "world evaluation", console=None) -> str:
    """Prints the table (to `console`, or stdout) and returns it as plain text."""
    from rich.console import Console

    table = format_table(metrics, title)
    recorder = Console(record=True, width=100, file=io.StringIO())
    recorder.print(table)
    text = recorder.export_text()
    (console or Console()).print(table)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.eval", description="Score predictions on a world corpus's eval items.")
    parser.add_argument("--items", required=True, help="eval/items.jsonl of a corpus (training.world.datasets)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help='JSONL: {"id", "answer", "entities"?} per line')
    source.add_argument("--reference", action="store_true", help="score the corpus's own answers (sanity check)")
    parser.add_argument("--iou", type=float, default=0.5)
    args = parser.parse_args(argv)
    with open(args.items) as handle:
        items = [json.loads(line) for line in handle if line.strip()]
    if args.reference:
        predictions = reference_predictions(items)
    else:
        with open(args.predictions) as handle:
            predictions = {p["id"]: p for p in (json.loads(line) for line in handle if line.strip())}
    print_table(evaluate(items, predictions, args.iou), title=f"world evaluation ({len(items)} items)")
