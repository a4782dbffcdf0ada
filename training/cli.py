"""`bubo train stage1|stage2 --config FILE [--resume CKPT]`.

Wired into `bubogpt/cli.py` with:

    from training.cli import add_train_parser
    add_train_parser(sub)

(imports of the training code happen only when the command runs). Multi-GPU: launch the same command
with torchrun, e.g. `torchrun --nproc-per-node 8 -m bubogpt.cli train stage2 --config ...`.
"""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.loop import Trainer

    cfg = load_config(args.config, stage=args.stage)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.no_progress:
        cfg.progress = False
    history = Trainer(cfg).fit(resume=args.resume)
    if history:
        last = history[-1]
        print(f"{cfg.stage}: step {last['step']}, loss {last['loss']:.4f}; model in {cfg.output_dir}/model")
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    train = subparsers.add_parser("train", help="stage 1 / stage 2 training (see training/configs/)")
    stages = train.add_subparsers(dest="stage", required=True, metavar="{stage1,stage2}")
    helps = {
        "stage1": "align modalities on captions: vision projection, audio Q-Former + projection",
        "stage2": "instruction tuning on image, audio, image+audio and negative pairs (projections)",
    }
    for stage, text in helps.items():
        parser = stages.add_parser(stage, help=text)
        parser.add_argument("--config", required=True, help="TOML or JSON training config")
        parser.add_argument("--resume", help="checkpoint file, checkpoint folder, or 'latest' (this run's output_dir)")
        parser.add_argument("--output-dir", help="override the config's output_dir")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.set_defaults(func=_train)
    return train
