"""`bubo eval`: the held-out world evaluation (training/nano/evaluate.py) of one or more model
directories through the PyTorch reference, or of a running `bubo serve` through its gRPC API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def server_predictor(endpoint, timeout: float = 120.0):
    """Answers and grounded entities from a running `bubo serve` (greedy), in the evaluator's format."""
    from bubogpt.grounding import rle
    from serving.client import chat_request, collect
    from serving.proto import bubo_pb2_grpc
    from training.nano.evaluate import MAX_NEW_TOKENS

    stub = bubo_pb2_grpc.BuboStub(endpoint.channel())

    def predict(text: str, image: bytes | None, audio: bytes | None, ground: bool) -> dict[str, Any]:
        request = chat_request(text, image=image or b"", audio=audio or b"", ground=ground and image is not None,
                               max_new_tokens=MAX_NEW_TOKENS)
        result = collect(stub.Chat(request, timeout=timeout))
        prediction: dict[str, Any] = {"answer": result.text}
        if ground and image is not None:
            prediction["entities"] = [
                {"label": e.label, "score": e.score, "box_xyxy": [e.box.x0, e.box.y0, e.box.x1, e.box.y1],
                 "mask": rle.decode({"size": [e.mask.height, e.mask.width], "counts": e.mask.counts})}
                for e in result.entities
            ]
        return prediction

    return predict


def _eval(args: argparse.Namespace) -> int:
    from serving.commands import endpoint_from
    from training.nano.evaluate import (evaluate_model, held_out_corpus, metrics_json, reference_predictor, side_by_side,
                                        targets_table)

    for model in args.model or ():
        if not (Path(model) / "bubogpt.json").is_file():
            raise SystemExit(f"--model: {model} is not a model directory (no bubogpt.json)")
    corpus_dir = Path(args.corpus_dir) if args.corpus_dir else Path.home() / ".cache" / "bubogpt" / "eval" / f"seed-{args.seed}-images-{args.images}"
    corpus = held_out_corpus(corpus_dir, args.seed, args.images, progress=True)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    if args.server:
        predictors = {args.server: server_predictor(endpoint_from(args))}
    else:
        models = args.model or [None]
        labels = [Path(m).name if m else "built-in" for m in models]
        if len(set(labels)) < len(labels):
            labels = [f"{Path(m).parent.name}/{Path(m).name}" if m else "built-in" for m in models]
        if len(set(labels)) < len(labels):
            labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
        predictors = {label: reference_predictor(m, grounding=not args.no_grounding) for label, m in zip(labels, models)}
    columns = {}
    for label, predict in predictors.items():
        overlays = Path(args.overlays) / label.replace("/", "_").replace(":", "_") if args.overlays else None
        metrics, _ = evaluate_model(predict, corpus, tasks=tasks, limit=args.limit, ground=not args.no_grounding, progress=True,
                                    overlays=overlays)
        columns[label] = metrics
    result = {k: metrics_json(v) for k, v in columns.items()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        side_by_side(columns, f"held-out world evaluation (seed {args.seed}, {args.images} images)")
        if not tasks and not args.limit and not args.no_grounding:  # the targets are defined on the whole held-out set
            for label, metrics in columns.items():
                targets_table(metrics, f"targets: {label}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def register(sub) -> None:
    from serving.commands import connection_arguments

    ev = sub.add_parser("eval", help="answers and grounding on held-out synthetic-world seeds (side by side for several models)")
    ev.add_argument("--model", action="append", help="model directory; repeat to compare side by side (default: the built-in model)")
    ev.add_argument("--server", help="evaluate a running `bubo serve` at HOST:PORT instead")
    connection_arguments(ev)
    ev.add_argument("--seed", type=int, default=1000, help="world seed of the held-out corpus (training uses 0)")
    ev.add_argument("--images", type=int, default=200, help="images in the held-out corpus")
    ev.add_argument("--tasks", help="comma-separated subset of caption,describe,qa,audio,audio_caption,source,negative")
    ev.add_argument("--limit", type=int, help="evaluate only the first N items")
    ev.add_argument("--no-grounding", action="store_true", help="score answers only")
    ev.add_argument("--corpus-dir", help="where the held-out corpus goes (default: ~/.cache/bubogpt/eval/seed-S-images-K)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON to stdout (instead of the table)")
    ev.add_argument("--json-out", help="also write the metrics JSON to this file")
    ev.add_argument("--overlays", help="save mask overlays and answers of the first grounded images here (one folder per model)")
    ev.set_defaults(func=_eval)
