"""The training layer's subcommand: `bubo train stage1|stage2 --config FILE [--resume CKPT]` and
`bubo train nano`.

Registered by the `bubo` command (bubo_cli/main.py); the training code is imported only when the
command runs. Multi-GPU: launch the same command with torchrun, e.g.
`torchrun --nproc-per-node 8 -m bubo_cli train stage2 --config ...`.
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


def _train_nano(args: argparse.Namespace) -> int:
    import json

    from training.nano.pipeline import Recipe, train_nano

    recipe = Recipe(seed=args.seed, ablation=not args.no_ablation)
    if args.quick:
        recipe = recipe.quick()
    command = f"bubo train nano --seed {args.seed}" + (" --quick" if args.quick else "") + (" --no-ablation" if args.no_ablation else "")
    if args.grounding_from:
        command += f" --grounding-from {args.grounding_from}"
    report = train_nano(args.out, recipe, workdir=args.workdir, progress=not args.no_progress, command=command,
                        grounding_from=args.grounding_from)
    from training.nano.report import print_report

    print_report(report)
    if args.json:
        print(json.dumps(report, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    train = subparsers.add_parser("train", help="stage 1 / stage 2 training (see training/configs/); `nano`: the built-in default")
    stages = train.add_subparsers(dest="stage", required=True, metavar="{stage1,stage2,nano}")
    nano = stages.add_parser("nano", help="train every part of the nano model on the synthetic world (about an hour on 2 cores)")
    nano.add_argument("--out", default="runs/nano/model", help="the trained model directory (our format + grounding/)")
    nano.add_argument("--workdir", help="corpus, intermediate models and logs (default: OUT.work)")
    nano.add_argument("--seed", type=int, default=0)
    nano.add_argument("--quick", action="store_true", help="tiny sizes: the whole recipe in a few minutes (smoke test)")
    nano.add_argument("--no-ablation", action="store_true", help="skip stage 2 without negative pairs")
    nano.add_argument("--json", action="store_true", help="also print the report as JSON to stdout")
    nano.add_argument("--json-out", help="also write the report JSON to this file")
    nano.add_argument("--grounding-from", help="reuse grounding nets trained by `python -m training.grounding --out DIR` (skips that lane)")
    nano.add_argument("--no-progress", action="store_true")
    nano.set_defaults(func=_train_nano)
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
