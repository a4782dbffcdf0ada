"""Why the nano RAM tagger does not learn (issue 20, part 1): one tagger trained alone on a world corpus,
scored on a held-out one, per tag (AUC) and overall (F1 at thresholds calibrated on 10 % of the
training images), against a plain CNN given the same pixels, labels, loss and optimizer.

    python -m training.world.datasets --out /tmp/gw8k --seed 0 --images 8000 --workers 2
    python -m training.world.datasets --out /tmp/gw_eval --seed 1000 --images 300
    python benchmarks/results/tagger-probe-20261203/probe.py --net ram --corpus /tmp/gw8k --held-out /tmp/gw_eval \
        --steps 3000 --lr 5e-4 [--image-size 128] [--embed-dim 32] [--init official]

The tagger is `training.grounding.tagger`'s: its batches (flip augmentation), BCE, `train_steps`
(AdamW, warm-up then cosine), `init_tagger`, `calibrate_thresholds`. One thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bubogpt.grounding import ram  # noqa: E402
from bubogpt.grounding.pipeline import build_random_grounding  # noqa: E402
from training.grounding.samples import load_samples  # noqa: E402
from training.grounding.tagger import calibrate_thresholds, init_tagger, tag_targets, tagger_batch  # noqa: E402
from training.steps import train_steps  # noqa: E402


class Cnn(nn.Module):
    """Four stride-2 3x3 convolutions, global max-pool, one linear layer: the comparison."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                 nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(128, num_tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).amax((2, 3)))


def auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--net", choices=("ram", "cnn"), default="ram")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--held-out", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--image-size", type=int, default=0, help="tagger input size (default: the tiny preset's 64)")
    parser.add_argument("--embed-dim", type=int, default=0, help="Swin embed dim (default: the tiny preset's 16)")
    parser.add_argument("--init", choices=("ours", "official"), default="ours",
                        help="ours: init_tagger (PyTorch defaults, unit label embeddings); official: RamTagger's std 0.02")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    pipeline = build_random_grounding("tiny", Path(tempfile.mkdtemp()))
    cfg = pipeline.tagger.config
    cfg = dataclasses.replace(cfg, image_size=args.image_size or cfg.image_size, embed_dim=args.embed_dim or cfg.embed_dim)
    pipeline.tagger = ram.RamTagger(cfg)
    samples = load_samples(args.corpus, pipeline, progress=False)
    held_out = load_samples(args.held_out, pipeline, progress=False)
    n_cal = len(samples) // 10
    fit, calibration = samples[n_cal:], samples[:n_cal]
    if args.init == "ours":
        init_tagger(pipeline.tagger)
    model = pipeline.tagger if args.net == "ram" else Cnn(cfg.num_tags)
    logits = pipeline.tagger.logits if args.net == "ram" else model
    targets = tag_targets(fit, pipeline.tag_list)
    rng = np.random.default_rng(11)
    order: list[int] = []

    def loss_of(step: int) -> torch.Tensor:
        nonlocal order
        if len(order) < 32:
            order += rng.permutation(len(fit)).tolist()
        idx, order = order[:32], order[32:]
        return F.binary_cross_entropy_with_logits(logits(tagger_batch([fit[i] for i in idx], cfg, rng)), targets[idx])

    model.train()
    result = train_steps(model.parameters(), loss_of, steps=args.steps, lr=args.lr, weight_decay=0.05, lr_floor=0.05,
                         progress=False)
    model.eval()

    @torch.no_grad()
    def probs(data):
        return torch.cat([torch.sigmoid(logits(tagger_batch(data[i:i + 64], cfg, None))) for i in range(0, len(data), 64)])

    thresholds = calibrate_thresholds(probs(calibration), tag_targets(calibration, pipeline.tag_list))
    report = {"args": vars(args), "seconds": round(result.seconds), "loss_first": round(result.losses[0], 3),
              "loss_last": round(float(np.mean(result.losses[-50:])), 3)}
    for name, data in (("train", fit[:500]), ("held_out", held_out)):
        p, y = probs(data), tag_targets(data, pipeline.tag_list) > 0.5
        present = [j for j in range(len(pipeline.tag_list)) if y[:, j].any() and not y[:, j].all()]
        pred = p > thresholds[None]
        tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
        report[name] = {"mean_auc": round(float(np.mean([auc(p[:, j], y[:, j]) for j in present])), 3),
                        "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 3),
                        "auc": {pipeline.tag_list[j]: round(auc(p[:, j], y[:, j]), 2) for j in present}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
