"""RAM tagger (tiny): multi-label BCE on the scene's tags, then per-tag thresholds calibrated for F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bubogpt.grounding import ram
from bubogpt.grounding.pipeline import GroundingPipeline
from training.grounding.evaluation import precision_recall_f1
from training.grounding.samples import Sample, normalise
from training.steps import train_steps
from training.world.scene import OBJECT_KINDS

TAGGER_BATCH = 32
# object tags keep at least this recall: a missed tag hides its objects from the detector
OBJECT_TAG_RECALL = 0.95


def tag_targets(samples: list[Sample], tag_list: list[str]) -> torch.Tensor:
    index = {t: i for i, t in enumerate(tag_list)}
    y = torch.zeros(len(samples), len(tag_list))
    for row, s in enumerate(samples):
        for t in s.tags:
            if t in index:
                y[row, index[t]] = 1.0
    return y


def tagger_batch(samples: list[Sample], cfg: ram.RamConfig, rng: np.random.Generator | None) -> torch.Tensor:
    """Normalised RAM inputs; with rng, each image is flipped left-right with p 0.5."""
    x = torch.stack([s.tag_pixels for s in samples])
    if rng is not None:
        flip = torch.from_numpy(rng.random(len(samples)) < 0.5)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return normalise(x, cfg.pixel_mean, cfg.pixel_std)


def tagger_loss(tagger: ram.RamTagger, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(tagger.logits(pixels), targets)


@torch.no_grad()
def tagger_probs(tagger: ram.RamTagger, samples: list[Sample], batch: int = 64) -> torch.Tensor:
    tagger.eval()
    out = [tagger(tagger_batch(samples[i:i + batch], tagger.config, None)) for i in range(0, len(samples), batch)]
    return torch.cat(out) if out else torch.zeros(0, tagger.config.num_tags)


def calibrate_thresholds(probs: torch.Tensor, targets: torch.Tensor, default: float = 0.5, min_positives: int = 5,
                         min_recall: dict[int, float] | None = None) -> torch.Tensor:
    """Per-tag threshold maximising F1 on held-out probabilities (ties: the middle of the best range).

    `min_recall` {tag index: recall}: for those tags the highest threshold that keeps at least that
    recall, when the F1-best one does not (object tags: a missed tag hides its objects from the
    detector, a spurious one is only a negative phrase in its caption).
    """
    grid = torch.linspace(0.01, 0.95, 95)
    out = torch.full((probs.shape[1],), default)
    for j in range(probs.shape[1]):
        pos = targets[:, j] > 0.5
        if int(pos.sum()) < min_positives:
            continue
        pred = probs[:, j][None, :] > grid[:, None]
        tp = (pred & pos[None]).sum(1).float()
        fp = (pred & ~pos[None]).sum(1).float()
        fn = (~pred & pos[None]).sum(1).float()
        f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
        best = torch.nonzero(f1 >= f1.max() - 1e-6).flatten()
        out[j] = grid[best[len(best) // 2]]
        if min_recall and j in min_recall:
            recall = tp / pos.sum()
            if float(recall[best[len(best) // 2]]) < min_recall[j]:
                ok = torch.nonzero(recall >= min_recall[j]).flatten()
                out[j] = grid[ok.max()] if len(ok) else grid[0]
    return out


def init_tagger(tagger: ram.RamTagger) -> None:
    """Training start: PyTorch's default init for linear and conv layers, unit-scale label embeddings
    (RamTagger's std-0.02 init is meant to be overwritten by a checkpoint and trains slowly)."""
    with torch.no_grad():
        for module in tagger.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.reset_parameters()
        torch.nn.init.normal_(tagger.label_embed, std=1.0)


def train_tagger(tagger: ram.RamTagger, train: list[Sample], tag_list: list[str], steps: int, *, seed: int,
                 lr: float = 2e-3, deadline: float | None = None, progress: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 11)
    targets = tag_targets(train, tag_list)
    order: list[int] = []

    def loss_of(step: int) -> torch.Tensor:
        nonlocal order
        if len(order) < TAGGER_BATCH:  # epochs of shuffled images, batches running across epochs
            order += rng.permutation(len(train)).tolist()
        idx, order = order[:TAGGER_BATCH], order[TAGGER_BATCH:]
        return tagger_loss(tagger, tagger_batch([train[i] for i in idx], tagger.config, rng), targets[idx])

    tagger.train()
    result = train_steps(tagger.parameters(), loss_of, steps=steps, lr=lr, weight_decay=0.05, lr_floor=0.05,
                         deadline=deadline, label="tagger", progress=progress)
    tagger.eval()
    return result.summary()


def calibrate_tagger(pipeline: GroundingPipeline, held_out: list[Sample]) -> dict[str, float] | None:
    """Sets `pipeline.thresholds` for F1 on `held_out` (object tags: at least OBJECT_TAG_RECALL) and
    returns the tags' precision / recall / F1 there; without held-out images every threshold is 0.5."""
    if not held_out:
        pipeline.thresholds = torch.full((len(pipeline.tag_list),), 0.5)
        return None
    probs = tagger_probs(pipeline.tagger, held_out)
    targets = tag_targets(held_out, pipeline.tag_list)
    min_recall = {pipeline.tag_list.index(k): OBJECT_TAG_RECALL for k in OBJECT_KINDS if k in pipeline.tag_list}
    pipeline.thresholds = calibrate_thresholds(probs, targets, min_recall=min_recall)
    pred = probs > pipeline.thresholds[None]
    tp = int((pred & (targets > 0.5)).sum())
    fp = int((pred & (targets < 0.5)).sum())
    fn = int((~pred & (targets > 0.5)).sum())
    return precision_recall_f1(tp, fp, fn)
