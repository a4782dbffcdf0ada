"""Trains the tiny grounding networks (RAM tagger, Grounding DINO, SAM) on the synthetic world.

    python -m training.grounding --corpus /tmp/gw_train --out runs/grounding [--eval /tmp/gw_eval] [--minutes 30]

Every schedule is a fixed number of steps derived from the budget (a seed and a budget give the same
weights); a wall-clock guard stops a net early only when the machine is much slower than planned.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bubogpt.grounding.pipeline import build_random_grounding, save_grounding
from training.grounding.detector import train_detector
from training.grounding.evaluation import evaluate_grounding, tune_detection_thresholds
from training.grounding.samples import load_images, load_samples
from training.grounding.segmenter import train_segmenter
from training.grounding.tagger import calibrate_tagger, init_tagger, train_tagger
from training.seeding import seed_everything

log = logging.getLogger(__name__)

# Share of the budget per net (the rest: loading, calibration, saving), and the measured seconds per
# step on one thread of the reference machine at the nets' batch sizes (sizes the schedules).
BUDGET_SHARES = {"tagger": 0.05, "segmenter": 0.17, "detector": 0.70}
SECONDS_PER_STEP = {"tagger": 0.095, "segmenter": 0.137, "detector": 0.28}
# held out of the tagger's and the detector's data: tag and box / text thresholds are tuned on it
VAL_FRACTION = 0.1


def plan_steps(budget_minutes: float) -> dict[str, int]:
    """Steps per net for a wall-clock budget (one thread), from the measured seconds per step."""
    seconds = budget_minutes * 60.0
    return {name: max(1, int(seconds * share / SECONDS_PER_STEP[name])) for name, share in BUDGET_SHARES.items()}


def train_grounding(corpus_root: str | Path, out_model_dir: str | Path, *, seed: int = 0, budget_minutes: float = 30.0,
                    progress: bool = True, limit: int | None = None, steps: dict[str, int] | None = None,
                    eval_root: str | Path | None = None) -> dict[str, Any]:
    """Trains tagger, segmenter and detector (tiny presets) on a world corpus; saves `out_model_dir/grounding/`.

    `budget_minutes` sizes every schedule (fixed step counts, so the result depends only on the seed
    and the budget); `steps` overrides the plan per net ({"tagger", "segmenter", "detector"}).
    Returns a report: steps, losses, seconds per net, the chosen thresholds, held-out tag metrics of the
    calibration slice, and with `eval_root` the metrics of `evaluate_grounding` there.
    """
    t_start = time.monotonic()
    budget_s = budget_minutes * 60.0
    plan = dict(plan_steps(budget_minutes))
    if steps:
        plan.update(steps)
    out_model_dir = Path(out_model_dir)
    grounding_dir = out_model_dir / "grounding"
    seed_everything(seed)
    pipeline = build_random_grounding("tiny", grounding_dir)
    report: dict[str, Any] = {"seed": seed, "budget_minutes": budget_minutes, "plan": plan, "seconds": {}}

    t0 = time.monotonic()
    samples = load_samples(corpus_root, pipeline, limit=limit, progress=progress)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(samples))
    n_val = max(1, int(round(len(samples) * VAL_FRACTION))) if len(samples) > 1 else 0
    val = [samples[i] for i in sorted(perm[:n_val])]
    fit = [samples[i] for i in sorted(perm[n_val:])]
    report["seconds"]["load"] = time.monotonic() - t0
    report["images"] = {"train": len(fit), "calibration": len(val)}
    log.info("decoded %d images in %.1fs (%d train, %d calibration)", len(samples), report["seconds"]["load"], len(fit), len(val))

    def deadline(name: str) -> float:
        # a net may overrun its share by half, and never past the whole budget (less a margin to finish)
        share = BUDGET_SHARES[name] * budget_s * 1.5
        return min(time.monotonic() + share, t_start + budget_s * 0.97)

    t0 = time.monotonic()
    torch.manual_seed(seed + 1)
    init_tagger(pipeline.tagger)
    report["tagger"] = train_tagger(pipeline.tagger, fit, pipeline.tag_list, plan["tagger"], seed=seed,
                                    deadline=deadline("tagger"), progress=progress)
    calibration = calibrate_tagger(pipeline, val)
    if calibration is not None:
        report["tagger"]["calibration"] = calibration
    report["thresholds"] = {t: round(float(v), 3) for t, v in zip(pipeline.tag_list, pipeline.thresholds)}
    report["seconds"]["tagger"] = time.monotonic() - t0

    t0 = time.monotonic()
    torch.manual_seed(seed + 2)
    report["segmenter"] = train_segmenter(pipeline.segmenter_encoder, pipeline.segmenter_decoder, samples,
                                          plan["segmenter"], seed=seed, deadline=deadline("segmenter"), progress=progress)
    report["seconds"]["segmenter"] = time.monotonic() - t0

    t0 = time.monotonic()
    torch.manual_seed(seed + 3)
    # the calibration slice stays out of the detector's data: its box / text thresholds are tuned there
    report["detector"] = train_detector(pipeline.detector, pipeline.tokenizer, fit, pipeline.tag_list,
                                        plan["detector"], seed=seed, deadline=deadline("detector"), progress=progress)
    report["seconds"]["detector"] = time.monotonic() - t0

    pipeline.tagger.eval()
    pipeline.detector.eval()
    pipeline.segmenter_encoder.eval()
    pipeline.segmenter_decoder.eval()
    if val:
        t0 = time.monotonic()
        report["threshold_tuning"] = tune_detection_thresholds(pipeline, load_images(corpus_root, [s.index for s in val]))
        report["seconds"]["threshold_tuning"] = time.monotonic() - t0
    save_grounding(pipeline, out_model_dir)
    report["config"] = dataclasses.asdict(pipeline.config)
    report["seconds"]["train_total"] = time.monotonic() - t_start
    if eval_root is not None:
        t0 = time.monotonic()
        report["eval"] = evaluate_grounding(pipeline, eval_root, progress=progress)
        report["seconds"]["eval"] = time.monotonic() - t0
    report["seconds"]["total"] = time.monotonic() - t_start
    return report


def metrics_table(report: dict[str, Any], title: str = "held-out grounding"):
    from rich.table import Table

    table = Table(title=title)
    for column in ("metric", "value"):
        table.add_column(column)
    ev = report.get("eval", report)

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    for group in ("tags", "objects", "objects_and_regions", "oracle_detector", "oracle_segmenter"):
        for key, value in ev.get(group, {}).items():
            table.add_row(f"{group}.{key}", fmt(value))
    if "seconds_per_image" in ev:
        table.add_row("seconds_per_image", fmt(ev["seconds_per_image"]))
    for key, value in report.get("seconds", {}).items():
        table.add_row(f"seconds.{key}", f"{value:.1f}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.grounding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="world corpus (python -m training.world.datasets)")
    parser.add_argument("--out", required=True, help="model directory; the nets go to OUT/grounding/")
    parser.add_argument("--eval", help="held-out world corpus to score the trained pipeline on")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget on one thread (sizes the schedules)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    report = train_grounding(args.corpus, args.out, seed=args.seed, budget_minutes=args.minutes,
                             progress=not args.no_progress, eval_root=args.eval)
    (Path(args.out) / "grounding" / "train_report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    from rich.console import Console

    Console().print(metrics_table(report))
