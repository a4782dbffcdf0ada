"""Trains the tiny grounding networks (RAM tagger, Grounding DINO, SAM) on the synthetic world.

    python -m training.grounding --corpus /tmp/gw_train --out runs/grounding [--eval /tmp/gw_eval] [--minutes 30]

The three networks of `bubogpt.grounding.pipeline` (preset "tiny") are trained from scratch on a
world corpus (`python -m training.world.datasets`), each on what the pipeline feeds it at inference:

    tagger     RAM tiny, multi-label BCE on the scene's tags (objects and background regions); the
               per-tag thresholds are then calibrated for F1 on a held-out slice of the corpus.
    segmenter  SAM tiny encoder + box-prompt decoder, single-mask output (mask token 0, as the
               pipeline reads it); prompts are the visible truth boxes with jitter; sigmoid focal +
               dice loss of the upsampled low-res logits against the truth mask in SAM's input frame.
    detector   Grounding DINO tiny (30 queries), DETR-style: Hungarian matching of queries to objects
               (focal token cost + L1 + GIoU), sigmoid focal loss of query-token logits against the
               object's token in a caption built with `caption_from_tags` (tags shuffled, some dropped,
               absent kinds added as negatives), L1 + GIoU box losses, on the final layer, every
               intermediate decoder layer and the encoder's query-selection proposals (two-stage).
               Intermediate outputs come from `detector_forward_train`, which runs the model's own
               modules in the order of `GroundingDino.forward` (a test checks it gives the same outputs).

After training, the pipeline's box_threshold / text_threshold (saved in grounding.json) are chosen on
the calibration slice (10% of the corpus, kept out of the tagger's and the detector's data) for the
full pipeline's object F1 (`tune_detection_thresholds`): the detector's focal-loss token probabilities
are not calibrated like the official model's (BuboGPT's 0.25 / 0.2), and a higher text threshold drops the queries
whose phrase spans several kinds. The tagger gets a small share of the budget: on this corpus it stays
near the label prior whatever its input size (64 or 128 px probes: held-out AUC ~0.5 per kind), so its
recall-calibrated thresholds put nearly every kind in the caption and the detector does the work.

Background regions (sky, grass, water, road) are tags, never detector targets: in captions they are
negatives, so the pipeline grounds objects only (as `training.eval` scores grounding: objects).

Images are decoded and preprocessed once into uint8 tensors in memory; every schedule is a fixed
number of steps derived from `budget_minutes` (so a seed and a budget give the same weights), with a
wall-clock guard that stops a net early only when the machine is much slower than planned.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment

from bubogpt.grounding import grounding_dino as gdino
from bubogpt.grounding import ram, sam
from bubogpt.grounding.gdino_text import caption_from_tags, tokenize
from bubogpt.grounding.gdino_transformer import (
    contrastive_logits,
    encoder_output_proposals,
    inverse_sigmoid,
    sine_embed_boxes,
    sine_embed_scalar,
    sine_position_embedding,
)
from bubogpt.grounding.pipeline import GroundingPipeline, build_random_grounding, save_grounding
from training.schedule import cosine_lr
from training.world.scene import OBJECT_KINDS

log = logging.getLogger(__name__)

# Share of the budget per net (the rest: loading, calibration, saving), and the measured seconds per
# step on one thread of the reference machine at the batch sizes below (sizes the schedules).
BUDGET_SHARES = {"tagger": 0.05, "segmenter": 0.17, "detector": 0.70}
SECONDS_PER_STEP = {"tagger": 0.095, "segmenter": 0.137, "detector": 0.28}
TAGGER_BATCH = 32
SEGMENTER_BATCH = 8
DETECTOR_BATCH = 8
VAL_FRACTION = 0.1


# --------------------------------------------------------------------------------------------------
# Data: decoded once, kept as uint8 tensors
# --------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    index: int
    width: int
    height: int
    tags: list[str]
    kinds: list[str]  # per object
    boxes: np.ndarray  # [n, 4] visible xyxy, original pixels
    tag_pixels: torch.Tensor  # uint8 [3, S, S] RAM input (resized, not normalised)
    det_pixels: torch.Tensor  # uint8 [3, h, w] Grounding DINO input
    sam_pixels: torch.Tensor  # uint8 [3, S, S] SAM input frame (zero-padded bottom/right)
    sam_hw: tuple[int, int]
    sam_boxes: np.ndarray  # [n, 4] boxes in SAM's input frame
    sam_masks: torch.Tensor  # uint8 [n, L, L] soft truth masks (x255) in SAM's input frame at 2x the low-res size


def _to_uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_samples(corpus_root: str | Path, pipeline: GroundingPipeline, limit: int | None = None,
                 progress: bool = True) -> list[Sample]:
    """Decodes every grounding image of a world corpus into the three nets' inputs."""
    from tqdm import tqdm

    from training.world.datasets import read_grounding

    rcfg = pipeline.tagger.config
    dcfg = pipeline.detector.cfg
    scfg = pipeline.segmenter_encoder.cfg
    target = 2 * scfg.low_res_size
    samples: list[Sample] = []
    for i, (data, scene) in enumerate(tqdm(read_grounding(corpus_root), desc="decode", disable=not progress, unit="img")):
        if limit is not None and i >= limit:
            break
        image = Image.open(io.BytesIO(data)).convert("RGB")
        tag_pixels = _to_uint8_chw(image.resize((rcfg.image_size, rcfg.image_size), Image.Resampling.BILINEAR))
        h, w = gdino.resized_size(image.width, image.height, dcfg.image_size, dcfg.max_image_size)
        det_pixels = _to_uint8_chw(image.resize((w, h), Image.BILINEAR))
        sh, sw = sam.get_preprocess_shape(image.height, image.width, scfg.img_size)
        sam_pixels = torch.zeros(3, scfg.img_size, scfg.img_size, dtype=torch.uint8)
        sam_pixels[:, :sh, :sw] = _to_uint8_chw(image.resize((sw, sh), Image.Resampling.BILINEAR))
        objects = scene.objects
        boxes = np.array([o.visible_box for o in objects], dtype=np.float32).reshape(-1, 4)
        # visible boxes are inclusive pixel bounds or exclusive? tight_box gives the truth the eval uses
        if objects:
            masks = torch.from_numpy(np.stack([o.mask for o in objects])).float()[:, None]
            masks = F.interpolate(masks, (sh, sw), mode="bilinear", align_corners=False)
            framed = torch.zeros(len(objects), 1, scfg.img_size, scfg.img_size)
            framed[:, :, :sh, :sw] = masks
            framed = F.interpolate(framed, (target, target), mode="area")[:, 0]
            sam_masks = (framed.clamp(0, 1) * 255).round().to(torch.uint8)
        else:
            sam_masks = torch.zeros(0, target, target, dtype=torch.uint8)
        samples.append(Sample(
            index=i, width=image.width, height=image.height, tags=list(scene.tags), kinds=[o.kind for o in objects],
            boxes=boxes, tag_pixels=tag_pixels, det_pixels=det_pixels, sam_pixels=sam_pixels, sam_hw=(sh, sw),
            sam_boxes=sam.transform_boxes(boxes, (image.height, image.width), scfg).reshape(-1, 4), sam_masks=sam_masks,
        ))
    return samples


def _normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x / 255 - mean) / std, as the nets' preprocessing."""
    x = pixels.float().div(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _sam_normalise(samples: list[Sample], cfg: sam.SamConfig) -> torch.Tensor:
    """SAM normalises the 0..255 values and pads with zeros after normalising."""
    x = torch.stack([s.sam_pixels for s in samples]).float()
    x = (x - torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(cfg.pixel_std).view(1, 3, 1, 1)
    for i, s in enumerate(samples):
        h, w = s.sam_hw
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    return x


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Elementwise focal loss (RetinaNet); targets may be soft."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[M, ...] -> [M]."""
    prob = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes [N, 4] x [M, 4] -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union.clamp(min=1e-7)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def hungarian_match(cost: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets): (rows, cols), by column."""
    c = np.asarray(cost.detach().cpu() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    if c.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Tagger
# --------------------------------------------------------------------------------------------------


def tag_targets(samples: list[Sample], tag_list: list[str]) -> torch.Tensor:
    index = {t: i for i, t in enumerate(tag_list)}
    y = torch.zeros(len(samples), len(tag_list))
    for row, s in enumerate(samples):
        for t in s.tags:
            if t in index:
                y[row, index[t]] = 1.0
    return y


def tagger_batch(samples: list[Sample], cfg: ram.RamConfig, rng: np.random.Generator | None) -> torch.Tensor:
    x = torch.stack([s.tag_pixels for s in samples])
    if rng is not None:
        flip = torch.from_numpy(rng.random(len(samples)) < 0.5)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return _normalise(x, cfg.pixel_mean, cfg.pixel_std)


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


OBJECT_TAG_RECALL = 0.95


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
    from tqdm import tqdm

    rng = np.random.default_rng(seed + 11)
    targets = tag_targets(train, tag_list)
    opt = torch.optim.AdamW(tagger.parameters(), lr=lr, weight_decay=0.05)
    tagger.train()
    losses: list[float] = []
    order: list[int] = []
    done = 0
    bar = tqdm(range(steps), desc="tagger", disable=not progress)
    for step in bar:
        if deadline is not None and time.monotonic() > deadline:
            log.warning("tagger: time budget reached after %d of %d steps", step, steps)
            break
        if len(order) < TAGGER_BATCH:
            order += rng.permutation(len(train)).tolist()
        idx, order = order[:TAGGER_BATCH], order[TAGGER_BATCH:]
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, max(1, steps // 20), floor=0.05)
        loss = tagger_loss(tagger, tagger_batch([train[i] for i in idx], tagger.config, rng), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tagger.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    tagger.eval()
    return {"steps": done, "loss_first": float(np.mean(losses[:20])) if losses else None,
            "loss_last": float(np.mean(losses[-20:])) if losses else None}


# --------------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------------


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator | None, frame: int, scale: float = 0.06) -> np.ndarray:
    """Noisy copies of xyxy boxes: each side moves by N(0, scale * side length) plus N(0, 1) pixel."""
    if rng is None or len(boxes) == 0:
        return boxes.astype(np.float32)
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    noisy = boxes + rng.normal(0, scale, boxes.shape) * wh + rng.normal(0, 1.0, boxes.shape)
    noisy = np.clip(noisy, 0, frame)
    x0, x1 = np.minimum(noisy[:, 0], noisy[:, 2]), np.maximum(noisy[:, 0], noisy[:, 2])
    y0, y1 = np.minimum(noisy[:, 1], noisy[:, 3]), np.maximum(noisy[:, 1], noisy[:, 3])
    return np.stack([x0, y0, np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)], axis=1).astype(np.float32)


def segmenter_batch(samples: list[Sample], cfg: sam.SamConfig, rng: np.random.Generator | None,
                    max_objects: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (pixels [B, 3, S, S], image index per prompt [M], boxes [M, 1, 4] in the input frame, targets [M, L, L])."""
    pixels = _sam_normalise(samples, cfg)
    owners, boxes, masks = [], [], []
    for i, s in enumerate(samples):
        keep = np.arange(len(s.kinds))
        if max_objects is not None and len(keep) > max_objects and rng is not None:
            keep = np.sort(rng.choice(keep, max_objects, replace=False))
        owners += [i] * len(keep)
        boxes.append(jitter_boxes(s.sam_boxes[keep], rng, cfg.img_size))
        masks.append(s.sam_masks[keep])
    return (pixels, torch.tensor(owners, dtype=torch.long), torch.from_numpy(np.concatenate(boxes))[:, None],
            torch.cat(masks).float() / 255.0)


def segmenter_logits(encoder: sam.SamImageEncoder, decoder: sam.SamPromptDecoder, pixels: torch.Tensor,
                     owners: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Low-res mask logits [M, 4g, 4g], one per prompt (each prompt with its own image's embedding)."""
    embeddings = encoder(pixels)
    low_res, _ = decoder(embeddings[owners], boxes)
    return low_res[:, 0]


def segmenter_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's 20:1 focal + dice, on the logits bilinearly upsampled to the targets' size."""
    up = F.interpolate(logits[:, None], targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    focal = sigmoid_focal_loss(up, targets).flatten(1).mean(1)
    dice = dice_loss(up, targets)
    loss = (20 * focal + dice).mean()
    return loss, {"focal": focal.mean().item(), "dice": dice.mean().item()}


def train_segmenter(encoder: sam.SamImageEncoder, decoder: sam.SamPromptDecoder, train: list[Sample], steps: int, *,
                    seed: int, lr: float = 1.5e-3, deadline: float | None = None, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    rng = np.random.default_rng(seed + 22)
    train = [s for s in train if s.kinds]
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    encoder.train()
    decoder.train()
    losses: list[float] = []
    order: list[int] = []
    done = 0
    bar = tqdm(range(steps), desc="segmenter", disable=not progress)
    for step in bar:
        if deadline is not None and time.monotonic() > deadline:
            log.warning("segmenter: time budget reached after %d of %d steps", step, steps)
            break
        if len(order) < SEGMENTER_BATCH:
            order += rng.permutation(len(train)).tolist()
        idx, order = order[:SEGMENTER_BATCH], order[SEGMENTER_BATCH:]
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, max(1, steps // 20), floor=0.05)
        pixels, owners, boxes, targets = segmenter_batch([train[i] for i in idx], encoder.cfg, rng)
        loss, _ = segmenter_loss(segmenter_logits(encoder, decoder, pixels, owners, boxes), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    encoder.eval()
    decoder.eval()
    return {"steps": done, "loss_first": float(np.mean(losses[:20])) if losses else None,
            "loss_last": float(np.mean(losses[-20:])) if losses else None}


# --------------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------------


def detector_forward_train(model: gdino.GroundingDino, pixels: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                           text_self_attention_masks: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
    """`GroundingDino.forward` step by step with the model's own modules, also returning what training needs.

    -> {"pred_logits", "pred_boxes"} exactly as forward (the final decoder layer), "aux": the same for
    every earlier decoder layer, "enc": logits [B, Q, L] and boxes of the query-selection proposals.
    """
    tr = model.transformer
    dec = tr.decoder
    text_token_mask = attention_mask.bool()
    text_allowed = text_self_attention_masks.bool()
    text = model.feat_map(model.bert(input_ids, token_type_ids, position_ids, text_allowed))
    text_pos = sine_embed_scalar(position_ids, model.hidden)
    features = model.backbone(pixels)
    srcs = [proj(feature) for proj, feature in zip(model.input_proj, features)]
    for level in range(len(features), len(model.input_proj)):
        srcs.append(model.input_proj[level](features[-1] if level == len(features) else srcs[-1]))
    pos = [sine_position_embedding(s.shape[2], s.shape[3], model.hidden // 2, model.cfg.pe_temperature, s.device)
           for s in srcs]

    # Transformer.forward
    spatial_shapes = [(s.shape[2], s.shape[3]) for s in srcs]
    src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
    pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + tr.level_embed[lvl][None, None] for lvl, p in enumerate(pos)], dim=1)
    text_padding = ~text_token_mask
    memory, text = tr.encoder(src_flat, pos_flat, spatial_shapes, text, text_padding, ~text_allowed, text_pos)
    output_memory, output_proposals = encoder_output_proposals(memory, spatial_shapes)
    output_memory = tr.enc_output_norm(tr.enc_output(output_memory))
    enc_logits_all = contrastive_logits(output_memory, text, text_token_mask, None)
    scores = enc_logits_all.max(-1)[0]
    coords_unsigmoid = tr.enc_out_bbox_embed(output_memory) + output_proposals
    topk = torch.topk(scores, tr.num_queries, dim=1)[1]
    refpoints = torch.gather(coords_unsigmoid, 1, topk[..., None].expand(-1, -1, 4))
    enc_logits = torch.gather(enc_logits_all, 1, topk[..., None].expand(-1, -1, enc_logits_all.shape[-1]))
    tgt = tr.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)

    # TransformerDecoder.forward, keeping every layer
    reference = refpoints.sigmoid()
    output = tgt
    outputs, references = [], []
    for layer_id, layer in enumerate(dec.layers):
        reference_input = reference[:, :, None, :].expand(-1, -1, dec.num_levels, -1)
        query_pos = dec.ref_point_head(sine_embed_boxes(reference, dec.hidden // 2))
        output = layer(output, query_pos, reference_input, text, text_padding, memory, spatial_shapes)
        outputs.append(dec.norm(output))
        references.append(reference)
        if layer_id < len(dec.layers) - 1:
            reference = (model.bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()

    def head(hs: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred_logits": contrastive_logits(hs, text, text_token_mask, model.max_text_len),
                "pred_boxes": (model.bbox_embed(hs) + inverse_sigmoid(ref)).sigmoid()}

    final = head(outputs[-1], references[-1])
    final["aux"] = [head(h, r) for h, r in zip(outputs[:-1], references[:-1])]
    pad = torch.full_like(enc_logits[:, :, :1], float("-inf")).expand(-1, -1, model.max_text_len)
    final["enc"] = {"pred_logits": torch.cat((enc_logits, pad), dim=-1)[:, :, :model.max_text_len],
                    "pred_boxes": refpoints.sigmoid()}
    return final


@dataclass
class DetTarget:
    boxes: torch.Tensor  # [n, 4] cx, cy, w, h normalised
    tokens: torch.Tensor  # [n, L] positive map (1 on the object's tag tokens)


def make_caption(sample: Sample, rng: np.random.Generator | None, tag_list: list[str]) -> tuple[list[str], set[str]]:
    """Caption tags for a training image and the kinds whose objects are targets.

    With rng: each present object kind is dropped with p 0.1 (its objects become background), regions
    are kept with p 0.8, 0-2 absent object kinds join as negatives (p 0.5), and the order is shuffled
    half of the time (the pipeline's order is the tag list's).
    """
    kinds = sorted(set(sample.kinds))
    regions = [t for t in sample.tags if t not in OBJECT_KINDS]
    if rng is None:
        tags = kinds + regions
        return sorted(tags, key=lambda t: tag_list.index(t) if t in tag_list else len(tag_list)), set(kinds)
    present = [k for k in kinds if rng.random() >= 0.1]
    if not present and kinds:
        present = [kinds[int(rng.integers(len(kinds)))]]
    tags = present + [r for r in regions if rng.random() < 0.8]
    absent = [k for k in OBJECT_KINDS if k not in kinds]
    if absent and rng.random() < 0.6:
        n = int(rng.integers(1, len(absent) + 1))
        tags += [absent[i] for i in rng.permutation(len(absent))[:n]]
    if rng.random() < 0.5:
        tags = [tags[i] for i in rng.permutation(len(tags))]
    else:
        tags = sorted(tags, key=lambda t: tag_list.index(t) if t in tag_list else len(tag_list))
    return tags, set(present)


def detector_batch(samples: list[Sample], model: gdino.GroundingDino, tokenizer, tag_list: list[str],
                   rng: np.random.Generator | None) -> tuple[torch.Tensor, gdino.GroundingText, list[DetTarget]]:
    """Same-size images -> (pixels, text tensors, targets); with rng: flips and caption augmentation."""
    cfg = model.cfg
    pixels = torch.stack([s.det_pixels for s in samples])
    flips = (rng.random(len(samples)) < 0.5) if rng is not None else np.zeros(len(samples), dtype=bool)
    if flips.any():
        pixels = torch.where(torch.from_numpy(flips).view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    pixels = _normalise(pixels, cfg.pixel_mean, cfg.pixel_std)
    captions, targets_kinds = [], []
    for s in samples:
        tags, kinds = make_caption(s, rng, tag_list)
        captions.append(caption_from_tags(tags))
        targets_kinds.append(kinds)
    text = tokenize(captions, tokenizer, cfg)
    targets = []
    for row, (s, kinds, flip) in enumerate(zip(samples, targets_kinds, flips)):
        keep = [i for i, k in enumerate(s.kinds) if k in kinds]
        boxes = torch.from_numpy(s.boxes[keep]).reshape(-1, 4).clone()
        if flip:
            boxes[:, [0, 2]] = s.width - boxes[:, [2, 0]]
        scale = torch.tensor([s.width, s.height, s.width, s.height], dtype=torch.float32)
        b = boxes / scale
        cxcywh = torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), -1)
        tokens = torch.zeros(len(keep), cfg.max_text_len)
        ids = text.input_ids[row]
        for j, i in enumerate(keep):
            token_id = tokenizer.convert_tokens_to_ids(s.kinds[i])
            hit = (ids == token_id).nonzero().flatten()
            tokens[j, hit[hit < cfg.max_text_len]] = 1.0
        targets.append(DetTarget(cxcywh, tokens))
    return pixels, text, targets


COST_CLASS, COST_BBOX, COST_GIOU = 2.0, 5.0, 2.0
LOSS_CLASS, LOSS_BBOX, LOSS_GIOU = 2.0, 5.0, 2.0


@torch.no_grad()
def match_queries(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, targets: list[DetTarget]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hungarian matching per image: focal token cost (mean over the object's tokens) + L1 + GIoU."""
    out = []
    for logits, boxes, t in zip(pred_logits, pred_boxes, targets):
        if len(t.boxes) == 0:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        prob = logits.float().sigmoid()  # [Q, L] (0 outside the caption)
        alpha, gamma = 0.25, 2.0
        neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        tok = t.tokens / t.tokens.sum(1, keepdim=True).clamp(min=1)
        cost_class = (pos - neg) @ tok.T  # [Q, n]
        cost_bbox = torch.cdist(boxes, t.boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(t.boxes))
        cost = COST_CLASS * cost_class + COST_BBOX * cost_bbox + COST_GIOU * cost_giou
        out.append(hungarian_match(cost))
    return out


def detection_loss(outputs: dict[str, torch.Tensor], targets: list[DetTarget], text_mask: torch.Tensor,
                   num_boxes: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal token loss on every query x caption token + L1 and GIoU of matched boxes, for one output set."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    matches = match_queries(logits, boxes, targets)
    length = text_mask.shape[1]
    target_tokens = torch.zeros_like(logits[:, :, :length])
    src_boxes, tgt_boxes = [], []
    for b, ((rows, cols), t) in enumerate(zip(matches, targets)):
        if len(rows):
            target_tokens[b, torch.from_numpy(rows)] = t.tokens[torch.from_numpy(cols)][:, :length]
            src_boxes.append(boxes[b, torch.from_numpy(rows)])
            tgt_boxes.append(t.boxes[torch.from_numpy(cols)])
    valid = text_mask[:, None, :].expand_as(target_tokens)
    focal = sigmoid_focal_loss(logits[:, :, :length][valid], target_tokens[valid]).sum() / num_boxes
    if src_boxes:
        sb, tb = torch.cat(src_boxes), torch.cat(tgt_boxes)
        l1 = F.l1_loss(sb, tb, reduction="sum") / num_boxes
        giou = (1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(sb), box_cxcywh_to_xyxy(tb)))).sum() / num_boxes
    else:
        l1 = giou = logits.sum() * 0.0
    loss = LOSS_CLASS * focal + LOSS_BBOX * l1 + LOSS_GIOU * giou
    return loss, {"cls": focal.item(), "l1": l1.item(), "giou": giou.item()}


def detector_step_loss(model: gdino.GroundingDino, pixels: torch.Tensor, text: gdino.GroundingText,
                       targets: list[DetTarget]) -> tuple[torch.Tensor, dict[str, float]]:
    outputs = detector_forward_train(model, pixels, *text)
    text_mask = text.attention_mask.bool()[:, : model.max_text_len]
    num_boxes = max(1.0, float(sum(len(t.boxes) for t in targets)))
    total, parts = detection_loss(outputs, targets, text_mask, num_boxes)
    for aux in outputs["aux"]:
        total = total + detection_loss(aux, targets, text_mask, num_boxes)[0]
    total = total + detection_loss(outputs["enc"], targets, text_mask, num_boxes)[0]
    return total, parts


def size_buckets(samples: list[Sample]) -> dict[tuple[int, int], list[int]]:
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        buckets[tuple(s.det_pixels.shape[1:])].append(i)
    return dict(sorted(buckets.items()))


def detector_batches(samples: list[Sample], batch: int, rng: np.random.Generator):
    """Endless same-size batches: each epoch shuffles every size bucket and the order of the batches."""
    buckets = size_buckets(samples)
    while True:
        batches = []
        for idx in buckets.values():
            perm = [idx[i] for i in rng.permutation(len(idx))]
            batches += [perm[i:i + batch] for i in range(0, len(perm), batch)]
        for i in rng.permutation(len(batches)):
            yield batches[i]


def train_detector(model: gdino.GroundingDino, tokenizer, train: list[Sample], tag_list: list[str], steps: int, *,
                   seed: int, lr: float = 1e-3, deadline: float | None = None, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    rng = np.random.default_rng(seed + 33)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    losses: list[float] = []
    batches = detector_batches(train, DETECTOR_BATCH, rng)
    done = 0
    bar = tqdm(range(steps), desc="detector", disable=not progress)
    for step in bar:
        if deadline is not None and time.monotonic() > deadline:
            log.warning("detector: time budget reached after %d of %d steps", step, steps)
            break
        idx = next(batches)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, max(1, steps // 20), floor=0.05)
        pixels, text, targets = detector_batch([train[i] for i in idx], model, tokenizer, tag_list, rng)
        loss, parts = detector_step_loss(model, pixels, text, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", cls=f"{parts['cls']:.3f}", giou=f"{parts['giou']:.3f}")
    model.eval()
    return {"steps": done, "loss_first": float(np.mean(losses[:20])) if losses else None,
            "loss_last": float(np.mean(losses[-20:])) if losses else None}


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def _tag_counts(pred: list[str], truth: list[str]) -> tuple[int, int, int]:
    p, t = set(pred), set(truth)
    return len(p & t), len(p - t), len(t - p)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


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

    from training.eval import GroundingScore, score_grounding, truth_entities
    from training.world.datasets import read_grounding

    def add(total: GroundingScore, g: GroundingScore) -> GroundingScore:
        return GroundingScore(total.tp + g.tp, total.fp + g.fp, total.fn + g.fn, total.box_ious + g.box_ious,
                              total.mask_ious + g.mask_ious)

    def summary(g: GroundingScore) -> dict[str, float]:
        return {"precision": g.precision, "recall": g.recall, "f1": g.f1, "box_iou": g.mean_box_iou,
                "mask_iou": g.mean_mask_iou, "tp": g.tp, "fp": g.fp, "fn": g.fn}

    objects = GroundingScore(0, 0, 0, [], [])
    with_regions = GroundingScore(0, 0, 0, [], [])
    oracle_det = GroundingScore(0, 0, 0, [], [])
    oracle_masks: list[float] = []
    tag_tp = tag_fp = tag_fn = 0
    n = 0
    seconds = 0.0
    from training.eval import mask_iou

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
        objects = add(objects, score_grounding(result.entities, scene))
        with_regions = add(with_regions, score_grounding(result.entities, truth_entities(scene, regions=True)))
        if oracle:
            dets = pipeline.detect(image, caption_from_tags(scene.tags)) if scene.tags else []
            oracle_det = add(oracle_det, score_grounding(
                [{"label": d.phrase, "box_xyxy": d.box_xyxy} for d in dets], scene))
            if scene.objects:
                boxes = np.array([o.visible_box for o in scene.objects], dtype=np.float32)
                masks = pipeline.segment(image, boxes)
                oracle_masks += [mask_iou(m, o.mask) for m, o in zip(masks, scene.objects)]
    report = {"images": n, "tags": _prf(tag_tp, tag_fp, tag_fn), "objects": summary(objects),
              "objects_and_regions": summary(with_regions), "seconds_per_image": seconds / max(1, n)}
    if oracle:
        report["oracle_detector"] = summary(oracle_det)
        report["oracle_segmenter"] = {"mask_iou": float(np.mean(oracle_masks)) if oracle_masks else float("nan")}
    return report


BOX_THRESHOLDS = (0.2, 0.225, 0.25, 0.275, 0.3, 0.325, 0.35, 0.4, 0.45, 0.5)
TEXT_THRESHOLDS = BOX_THRESHOLDS


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
    from bubogpt.grounding.pipeline import clean_phrase, clip_box
    from training.eval import score_grounding

    tag_options = tag_options or {"current": pipeline.thresholds}
    default_key = (next(iter(tag_options)), pipeline.cfg.box_threshold, pipeline.cfg.text_threshold)
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
                pixels, _ = gdino.preprocess_image(image, model.cfg)
                text = gdino_tokenize_caption(caption_from_tags(tags), tok, model.cfg)
                logits, boxes = model(pixels, *text)
                cache[key] = (logits, boxes, text.input_ids)
            for bt in box_thresholds:
                for tt in text_thresholds:
                    ents = []
                    if key:
                        logits, boxes, ids = cache[key]
                        dets = gdino.postprocess(logits, boxes, ids, tok, (image.height, image.width), bt, tt)
                        for d in dets[: pipeline.cfg.max_entities]:
                            phrase = clean_phrase(d.phrase)
                            if phrase:
                                ents.append({"label": phrase, "box_xyxy": clip_box(d.box_xyxy, image.width, image.height)})
                    g = score_grounding(ents, scene)
                    c = counts[(name, bt, tt)]
                    c[0] += g.tp; c[1] += g.fp; c[2] += g.fn
    scored = {k: _prf(*v) for k, v in counts.items()}
    best = max(scored, key=lambda k: (round(scored[k]["f1"], 6), -k[1], -k[2]))
    if verbose:
        for k in sorted(scored, key=lambda k: -scored[k]["f1"])[:15]:
            print(k, {m: round(v, 3) for m, v in scored[k].items()})
    name, bt, tt = best
    pipeline.thresholds = tag_options[name]
    pipeline.cfg = dataclasses.replace(pipeline.cfg, box_threshold=float(bt), text_threshold=float(tt))
    default = scored.get(default_key)
    return {"tags": name, "box_threshold": bt, "text_threshold": tt, "objects": scored[best], "default": default}


def load_images(corpus_root: str | Path, indices: list[int]) -> list[tuple[Image.Image, Any]]:
    """(RGB image, scene) of the corpus's grounding items at `indices` (read order)."""
    from training.world.datasets import read_grounding

    wanted = set(indices)
    out = []
    for i, (data, scene) in enumerate(read_grounding(corpus_root)):
        if i > max(wanted, default=-1):
            break
        if i in wanted:
            out.append((Image.open(io.BytesIO(data)).convert("RGB"), scene))
    return out


def gdino_tokenize_caption(caption: str, tokenizer, cfg):
    return tokenize(caption, tokenizer, cfg)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


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
    if val:
        probs = tagger_probs(pipeline.tagger, val)
        targets = tag_targets(val, pipeline.tag_list)
        min_recall = {pipeline.tag_list.index(k): OBJECT_TAG_RECALL for k in OBJECT_KINDS if k in pipeline.tag_list}
        pipeline.thresholds = calibrate_thresholds(probs, targets, min_recall=min_recall)
        pred = probs > pipeline.thresholds[None]
        tp = int((pred & (targets > 0.5)).sum())
        fp = int((pred & (targets < 0.5)).sum())
        fn = int((~pred & (targets > 0.5)).sum())
        report["tagger"]["calibration"] = _prf(tp, fp, fn)
    else:
        pipeline.thresholds = torch.full((len(pipeline.tag_list),), 0.5)
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
        # box / text thresholds for the full pipeline's object F1 on the calibration slice (the
        # detector's token probabilities are focal-loss calibrated: BuboGPT's 0.25 / 0.2 are too low)
        t0 = time.monotonic()
        report["threshold_tuning"] = tune_detection_thresholds(pipeline, load_images(corpus_root, [s.index for s in val]))
        report["seconds"]["threshold_tuning"] = time.monotonic() - t0
    save_grounding(pipeline, out_model_dir)
    report["config"] = dataclasses.asdict(pipeline.cfg)
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


if __name__ == "__main__":
    main()
