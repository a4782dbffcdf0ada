"""RAM tagger (tiny): multi-label BCE on the scene's tags plus per-token kind presence on its Swin stages,
then per-tag thresholds calibrated for F1.

Why the presence loss: trained on the image-level tags alone, the from-scratch Swin learns the
background regions (large colour areas, AUC 1.0 within 200 steps) but never the object kinds, whatever
the step count, learning rate, loss or input size (held-out AUC per kind ~0.5 after 1,000 steps, 0.54
after 3,000; 64 and 128 px alike), while its backbone matches a reference Swin to 1e-6. A 4x4-patchify
stem gives a transformer no shape prior, and one bit per kind per picture is too weak a signal to grow
one. The world knows where every object is, so the tokens of two stages are also told which kinds lie
under them (linear probes, trained with the tagger, thrown away: the saved tagger is RAM's network and
nothing else). The tag head then reads tokens that already name what they cover.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.grounding import ram
from bubogpt.grounding.pipeline import GroundingPipeline
from training.grounding.evaluation import precision_recall_f1, roc_auc
from training.grounding.samples import Sample, normalise
from training.steps import train_steps
from training.world.scene import OBJECT_KINDS

log = logging.getLogger(__name__)

TAGGER_BATCH = 32
# Swin stages whose tokens learn which object kinds they cover: stage 1 (8x8 tokens at 64 px, about an
# object part each) teaches shapes, the last stage (2x2) is what the tag head reads.
PRESENCE_STAGES = (1, 3)
# weight of the presence loss (summed over the stages) against the tag BCE
PRESENCE_WEIGHT = 3.0
# a kind is present in a token when it covers at least this fraction of the token's pixels
PRESENCE_MIN_COVER = 0.05
# Object tags keep at least this recall when calibrating (a missed tag hides its objects from the
# detector, a spurious one is only a negative phrase of its caption); lower than the F1-best threshold's
# recall only costs precision.
OBJECT_TAG_RECALL = 0.8


def tag_targets(samples: list[Sample], tag_list: list[str]) -> torch.Tensor:
    index = {t: i for i, t in enumerate(tag_list)}
    y = torch.zeros(len(samples), len(tag_list))
    for row, s in enumerate(samples):
        for t in s.tags:
            if t in index:
                y[row, index[t]] = 1.0
    return y


def tagger_inputs(samples: list[Sample], cfg: ram.RamConfig,
                  rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised RAM inputs, kind cover per input patch); with rng, each image and its cover are
    flipped left-right together with p 0.5."""
    x = torch.stack([s.tag_pixels for s in samples])
    cover = torch.stack([s.kind_cover for s in samples])
    if rng is not None:
        flip = torch.from_numpy(rng.random(len(samples)) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        cover = torch.where(flip, cover.flip(-1), cover)
    return normalise(x, cfg.pixel_mean, cfg.pixel_std), cover


def tagger_batch(samples: list[Sample], cfg: ram.RamConfig, rng: np.random.Generator | None) -> torch.Tensor:
    """Normalised RAM inputs (`tagger_inputs` without the cover)."""
    return tagger_inputs(samples, cfg, rng)[0]


def tagger_loss(tagger: ram.RamTagger, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(tagger.logits(pixels), targets)


def presence_targets(cover: torch.Tensor, cfg: ram.RamConfig, stage: int) -> torch.Tensor:
    """Kind cover per input patch [B, K, P, P] -> presence per token of `stage` [B, tokens, K], in the
    stage's row-major token order (a stage-s token spans 2^s x 2^s input patches)."""
    cells = F.avg_pool2d(cover, 2**stage) if stage else cover
    if cells.shape[-1] != cfg.stage_resolution(stage):
        raise ValueError(f"cover of {cover.shape[-1]} patches does not tile stage {stage}'s {cfg.stage_resolution(stage)} tokens")
    return (cells >= PRESENCE_MIN_COVER).float().flatten(2).transpose(1, 2)


class PresenceProbes(nn.Module):
    """Training only: a linear kind-presence head on the last block of each of `stages` of the tagger's
    Swin, fed by forward hooks. `close()` removes the hooks; the tagger keeps no trace of them."""

    def __init__(self, tagger: ram.RamTagger, stages: tuple[int, ...] = PRESENCE_STAGES) -> None:
        super().__init__()
        cfg = tagger.config
        self.config = cfg
        self.stages = stages
        self.heads = nn.ModuleList(nn.Linear(cfg.stage_dim(s), len(OBJECT_KINDS)) for s in stages)
        self._tokens: dict[int, torch.Tensor] = {}
        self._hooks = [tagger.visual_encoder.layers[s].blocks[-1].register_forward_hook(self._keep(s)) for s in stages]

    def _keep(self, stage: int):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._tokens[stage] = output
        return hook

    def loss(self, cover: torch.Tensor) -> torch.Tensor:
        """Presence BCE of the tokens of the tagger's latest forward, summed over the stages."""
        return sum(F.binary_cross_entropy_with_logits(head(self._tokens[s]), presence_targets(cover, self.config, s))
                   for s, head in zip(self.stages, self.heads))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._tokens = {}


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
    """Tag BCE + PRESENCE_WEIGHT x the presence loss of `PresenceProbes` (see the module docstring)."""
    rng = np.random.default_rng(seed + 11)
    targets = tag_targets(train, tag_list)
    # the probes' init draws from the global RNG after the tagger's: a seed gives one result
    probes = PresenceProbes(tagger)
    order: list[int] = []

    def loss_of(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        nonlocal order
        if len(order) < TAGGER_BATCH:  # epochs of shuffled images, batches running across epochs
            order += rng.permutation(len(train)).tolist()
        idx, order = order[:TAGGER_BATCH], order[TAGGER_BATCH:]
        pixels, cover = tagger_inputs([train[i] for i in idx], tagger.config, rng)
        tags = tagger_loss(tagger, pixels, targets[idx])
        presence = probes.loss(cover)
        return tags + PRESENCE_WEIGHT * presence, {"tags": tags.item(), "presence": presence.item()}

    tagger.train()
    try:
        result = train_steps(list(tagger.parameters()) + list(probes.parameters()), loss_of, steps=steps, lr=lr,
                             weight_decay=0.05, lr_floor=0.05, deadline=deadline, label="tagger", progress=progress)
    finally:
        probes.close()
    tagger.eval()
    return result.summary()


def tag_scores(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor,
               tag_list: list[str]) -> dict[str, Any]:
    """Tags' precision / recall / F1 at `thresholds`, and the ranking quality of the probabilities:
    ROC AUC per tag (tags with positives and negatives), their mean ("auc") and the object kinds' mean
    ("object_auc"; 0.5 is a tagger that cannot tell a picture with the kind from one without)."""
    pred = probs > thresholds[None]
    pos = targets > 0.5
    scores: dict[str, Any] = precision_recall_f1(int((pred & pos).sum()), int((pred & ~pos).sum()), int((~pred & pos).sum()))
    per_tag = {t: roc_auc(probs[:, j], targets[:, j]) for j, t in enumerate(tag_list)}
    per_tag = {t: round(a, 4) for t, a in per_tag.items() if a is not None}
    objects = [per_tag[k] for k in OBJECT_KINDS if k in per_tag]
    scores["auc"] = float(np.mean(list(per_tag.values()))) if per_tag else None
    scores["object_auc"] = float(np.mean(objects)) if objects else None
    scores["auc_per_tag"] = per_tag
    return scores


def calibrate_tagger(pipeline: GroundingPipeline, held_out: list[Sample]) -> dict[str, Any] | None:
    """Sets `pipeline.thresholds` for F1 on `held_out` (object tags: at least OBJECT_TAG_RECALL) and
    returns the tags' scores there (`tag_scores`); without held-out images every threshold is 0.5."""
    if not held_out:
        pipeline.thresholds = torch.full((len(pipeline.tag_list),), 0.5)
        return None
    probs = tagger_probs(pipeline.tagger, held_out)
    targets = tag_targets(held_out, pipeline.tag_list)
    min_recall = {pipeline.tag_list.index(k): OBJECT_TAG_RECALL for k in OBJECT_KINDS if k in pipeline.tag_list}
    pipeline.thresholds = calibrate_thresholds(probs, targets, min_recall=min_recall)
    scores = tag_scores(probs, targets, pipeline.thresholds, pipeline.tag_list)
    log.info("tagger on %d held-out images: F1 %.3f, AUC %.3f (object kinds %.3f)", len(held_out), scores["f1"],
             scores["auc"] or float("nan"), scores["object_auc"] or float("nan"))
    return scores
