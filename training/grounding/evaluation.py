"""Scoring the grounding pipeline on a world corpus, and tuning its box / text thresholds.

    evaluate_grounding          the full pipeline (and oracle detector / segmenter) on a corpus's images
    tune_detection_thresholds   tag thresholds, box_threshold and text_threshold for the object F1

The detector's focal-loss token probabilities are not calibrated like the official model's (BuboGPT's
0.25 / 0.2), and a higher text threshold drops the queries whose phrase spans several kinds; so the
pipeline's thresholds are chosen on held-out images of the training corpus.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bubogpt.grounding import grounding_dino as gdino
from bubogpt.grounding import ram
from bubogpt.grounding.grounding_dino.preprocessing import caption_from_tags, tokenize
from bubogpt.grounding.pipeline import GroundingPipeline, clean_phrase, clip_box
from training.eval import GroundingScore, mask_iou, score_grounding, truth_entities

log = logging.getLogger(__name__)

BOX_THRESHOLDS = (0.2, 0.225, 0.25, 0.275, 0.3, 0.325, 0.35, 0.4, 0.45, 0.5)
TEXT_THRESHOLDS = BOX_THRESHOLDS


def precision_recall_f1(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _tag_counts(pred: list[str], truth: list[str]) -> tuple[int, int, int]:
    p, t = set(pred), set(truth)
    return len(p & t), len(p - t), len(t - p)


def _summary(g: GroundingScore) -> dict[str, float]:
    return {"precision": g.precision, "recall": g.recall, "f1": g.f1, "box_iou": g.mean_box_iou,
            "mask_iou": g.mean_mask_iou, "tp": g.tp, "fp": g.fp, "fn": g.fn}


@torch.inference_mode()
def evaluate_grounding(pipeline: GroundingPipeline, corpus_root: str | Path, limit: int | None = None,
                       oracle: bool = True, progress: bool = False) -> dict[str, Any]:
    """Runs the pipeline on a world corpus's images and scores it.

    -> {"images", "tags": P/R/F1 (on scene.tags), "objects": P/R/F1 at IoU 0.5 + mean box / mask IoU of
    the matches (`training.eval.score_grounding`, objects only), "objects_and_regions": the same against
    objects + regions, "oracle_detector": the detector prompted with the true tags, "oracle_segmenter":
    mean mask IoU of SAM prompted with the true visible boxes, "seconds_per_image"}.
    """
    from tqdm import tqdm

    from training.world.datasets import read_grounding

    objects = GroundingScore(0, 0, 0, [], [])
    with_regions = GroundingScore(0, 0, 0, [], [])
    oracle_det = GroundingScore(0, 0, 0, [], [])
    oracle_masks: list[float] = []
    tag_tp = tag_fp = tag_fn = 0
    n = 0
    seconds = 0.0
    for i, (data, scene) in enumerate(tqdm(read_grounding(corpus_root), desc="evaluate", disable=not progress)):
        if limit is not None and i >= limit:
            break
        image = Image.open(io.BytesIO(data)).convert("RGB")
        start = time.perf_counter()
        result = pipeline(image)
        seconds += time.perf_counter() - start
        n += 1
        tp, fp, fn = _tag_counts(result.tags, scene.tags)
        tag_tp, tag_fp, tag_fn = tag_tp + tp, tag_fp + fp, tag_fn + fn
        objects = objects + score_grounding(result.entities, scene)
        with_regions = with_regions + score_grounding(result.entities, truth_entities(scene, regions=True))
        if oracle:
            dets = pipeline.detect(image, caption_from_tags(scene.tags)) if scene.tags else []
            oracle_det = oracle_det + score_grounding([{"label": d.phrase, "box_xyxy": d.box_xyxy} for d in dets], scene)
            if scene.objects:
                boxes = np.array([o.visible_box for o in scene.objects], dtype=np.float32)
                masks = pipeline.segment(image, boxes)
                oracle_masks += [mask_iou(m, o.mask) for m, o in zip(masks, scene.objects)]
    report = {"images": n, "tags": precision_recall_f1(tag_tp, tag_fp, tag_fn), "objects": _summary(objects),
              "objects_and_regions": _summary(with_regions), "seconds_per_image": seconds / max(1, n)}
    if oracle:
        report["oracle_detector"] = _summary(oracle_det)
        report["oracle_segmenter"] = {"mask_iou": float(np.mean(oracle_masks)) if oracle_masks else float("nan")}
    return report


@torch.inference_mode()
def tune_detection_thresholds(pipeline: GroundingPipeline, items: list[tuple[Image.Image, Any]],
                              tag_options: dict[str, torch.Tensor] | None = None,
                              box_thresholds=BOX_THRESHOLDS, text_thresholds=TEXT_THRESHOLDS,
                              verbose: bool = False) -> dict[str, Any]:
    """Chooses the tag thresholds (among `tag_options`), box_threshold and text_threshold that maximise
    the full pipeline's object F1 (IoU 0.5, box matching as `training.eval.score_grounding`) on
    held-out (image, scene) pairs of the training corpus. The detector runs once per image and tag
    option; the threshold grid only re-runs `gdino.postprocess`. Sets the winners on `pipeline`.
    """
    tag_options = tag_options or {"current": pipeline.thresholds}
    default_key = (next(iter(tag_options)), pipeline.config.box_threshold, pipeline.config.text_threshold)
    box_thresholds = sorted(set(box_thresholds) | {default_key[1]})
    text_thresholds = sorted(set(text_thresholds) | {default_key[2]})
    model, tok = pipeline.detector, pipeline.tokenizer
    counts: dict[tuple[str, float, float], list[int]] = defaultdict(lambda: [0, 0, 0])
    for image, scene in items:
        rprobs = pipeline.tagger(ram.preprocess_image(image, pipeline.tagger.config)[None])[0]
        cache: dict[tuple[str, ...], tuple] = {}
        for name, thr in tag_options.items():
            tags = ram.select_tags(rprobs, thr, pipeline.tag_list, pipeline.deleted_tags)
            key = tuple(tags)
            if key and key not in cache:
                pixels, _ = gdino.preprocess_image(image, model.config)
                text = tokenize(caption_from_tags(tags), tok, model.config)
                logits, boxes = model(pixels, *text)
                cache[key] = (logits, boxes, text.input_ids)
            for bt in box_thresholds:
                for tt in text_thresholds:
                    ents = []
                    if key:
                        logits, boxes, ids = cache[key]
                        dets = gdino.postprocess(logits, boxes, ids, tok, (image.height, image.width), bt, tt)
                        for d in dets[: pipeline.config.max_entities]:
                            phrase = clean_phrase(d.phrase)
                            if phrase:
                                ents.append({"label": phrase, "box_xyxy": clip_box(d.box_xyxy, image.width, image.height)})
                    g = score_grounding(ents, scene)
                    c = counts[(name, bt, tt)]
                    c[0] += g.tp; c[1] += g.fp; c[2] += g.fn
    scored = {k: precision_recall_f1(*v) for k, v in counts.items()}
    best = max(scored, key=lambda k: (round(scored[k]["f1"], 6), -k[1], -k[2]))
    if verbose:
        for k in sorted(scored, key=lambda k: -scored[k]["f1"])[:15]:
            log.info("%s %s", k, {m: round(v, 3) for m, v in scored[k].items()})
    name, bt, tt = best
    pipeline.thresholds = tag_options[name]
    pipeline.config = dataclasses.replace(pipeline.config, box_threshold=float(bt), text_threshold=float(tt))
    default = scored.get(default_key)
    return {"tags": name, "box_threshold": bt, "text_threshold": tt, "objects": scored[best], "default": default}
