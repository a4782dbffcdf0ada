"""Trains the tiny grounding networks (RAM tagger, Grounding DINO, SAM) on the synthetic world.

    python -m training.grounding --corpus /tmp/gw_train --out runs/grounding [--eval /tmp/gw_eval] [--minutes 30]

The three networks of `bubogpt.grounding.pipeline` (preset "tiny") are trained from scratch on a world
corpus (`python -m training.world.datasets`), each on what the pipeline feeds it at inference:

    samples.py     the corpus's images decoded once into each net's input (uint8 tensors in memory)
    losses.py      focal, dice, GIoU, and the Hungarian matching of detector queries to objects
    tagger.py      RAM: multi-label BCE on the scene's tags (objects and background regions); per-tag
                   thresholds then calibrated for F1 on a held-out slice of the corpus
    segmenter.py   SAM: box prompts (truth boxes with jitter), focal + dice against the truth mask
    detector.py    Grounding DINO: DETR-style, on the final, every earlier decoder layer and the
                   query-selection proposals (`GroundingDino.forward_with_aux`)
    evaluation.py  the pipeline scored on a corpus; box / text threshold tuning
    driver.py      `train_grounding` (the budget, the split, the three nets in turn) and the command line

After training, the pipeline's box_threshold / text_threshold (saved in grounding.json) are chosen on
the calibration slice (10% of the corpus, kept out of the tagger's and the detector's data) for the
full pipeline's object F1 (`tune_detection_thresholds`). The tagger gets a small share of the budget:
on this corpus it stays near the label prior whatever its input size (64 or 128 px probes: held-out
AUC ~0.5 per kind), so its recall-calibrated thresholds put nearly every kind in the caption and the
detector does the work.

Background regions (sky, grass, water, road) are tags, never detector targets: in captions they are
negatives, so the pipeline grounds objects only (as `training.eval` scores grounding: objects).
"""

from training.grounding.detector import (
    DETECTOR_BATCH,
    detector_batch,
    detector_batches,
    detector_step_loss,
    make_caption,
    size_buckets,
    train_detector,
)
from training.grounding.driver import (
    BUDGET_SHARES,
    SECONDS_PER_STEP,
    VAL_FRACTION,
    main,
    metrics_table,
    plan_steps,
    train_grounding,
)
from training.grounding.evaluation import (
    BOX_THRESHOLDS,
    TEXT_THRESHOLDS,
    evaluate_grounding,
    precision_recall_f1,
    tune_detection_thresholds,
)
from training.grounding.losses import (
    COST_BBOX,
    COST_CLASS,
    COST_GIOU,
    LOSS_BBOX,
    LOSS_CLASS,
    LOSS_GIOU,
    DetTarget,
    box_cxcywh_to_xyxy,
    detection_loss,
    dice_loss,
    generalized_box_iou,
    hungarian_match,
    match_queries,
    sigmoid_focal_loss,
)
from training.grounding.samples import (
    Sample,
    load_images,
    load_samples,
    normalise,
    sam_normalise,
)
from training.grounding.segmenter import (
    SEGMENTER_BATCH,
    jitter_boxes,
    segmenter_batch,
    segmenter_logits,
    segmenter_loss,
    train_segmenter,
)
from training.grounding.tagger import (
    OBJECT_TAG_RECALL,
    TAGGER_BATCH,
    calibrate_tagger,
    calibrate_thresholds,
    init_tagger,
    tag_targets,
    tagger_batch,
    tagger_loss,
    tagger_probs,
    train_tagger,
)
from training.seeding import seed_everything

__all__ = [
    "BOX_THRESHOLDS", "BUDGET_SHARES", "COST_BBOX", "COST_CLASS", "COST_GIOU", "DETECTOR_BATCH", "LOSS_BBOX",
    "LOSS_CLASS", "LOSS_GIOU", "OBJECT_TAG_RECALL", "SECONDS_PER_STEP", "SEGMENTER_BATCH", "TAGGER_BATCH",
    "TEXT_THRESHOLDS", "VAL_FRACTION", "DetTarget", "Sample", "box_cxcywh_to_xyxy", "calibrate_tagger",
    "calibrate_thresholds", "detection_loss", "detector_batch", "detector_batches", "detector_step_loss",
    "dice_loss", "evaluate_grounding", "generalized_box_iou", "hungarian_match", "init_tagger", "jitter_boxes",
    "load_images", "load_samples", "main", "make_caption", "match_queries", "metrics_table", "normalise",
    "plan_steps", "precision_recall_f1", "sam_normalise", "seed_everything", "segmenter_batch",
    "segmenter_logits", "segmenter_loss", "sigmoid_focal_loss", "size_buckets", "tag_targets", "tagger_batch",
    "tagger_loss", "tagger_probs", "train_detector", "train_grounding", "train_segmenter", "train_tagger",
    "tune_detection_thresholds",
]
