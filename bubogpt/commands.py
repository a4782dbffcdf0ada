"""The model library's subcommands: `bubo info`, `bubo init`, `bubo convert`, `bubo reference`.

Registered by the `bubo` command (bubo_cli/main.py); each imports its modules when it runs, so
`bubo --help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _info(args: argparse.Namespace) -> int:
    from bubogpt.config import PRESETS, get_preset
    from bubogpt.info import describe

    if args.preset not in PRESETS:
        raise SystemExit(f"--preset: unknown preset {args.preset!r}; choose from {', '.join(sorted(PRESETS))}")
    cfg = get_preset(args.preset)
    rows = describe(cfg)
    if args.json:
        print(json.dumps({"preset": cfg.name, "components": rows, "total_params": sum(r["params"] for r in rows)}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"BuboGPT preset {cfg.name}")
    for column in ("component", "params", "input", "output"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in rows:
        table.add_row(row["component"], f"{row['params']:,}", str(row["input"]), str(row["output"]))
    table.add_row("total", f"{sum(r['params'] for r in rows):,}", "", "")
    Console().print(table)
    return 0


def _init(args: argparse.Namespace) -> int:
    from bubogpt.defaults import write_random_model

    path = write_random_model(args.out, preset=args.preset, seed=args.seed)
    print(f"wrote {args.preset} weights (seed {args.seed}) to {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from bubogpt.convert import convert_official

    for flag in ("eva_vit_g", "blip2", "imagebind", "bubogpt"):
        path = getattr(args, flag)
        if not Path(path).is_file():
            raise SystemExit(f"--{flag.replace('_', '-')}: {path}: no such file")
    if not Path(args.vicuna).is_dir():
        raise SystemExit(f"--vicuna: {args.vicuna}: not a directory")
    out = convert_official(
        args.out, args.preset, eva_vit_g=args.eva_vit_g, blip2=args.blip2, imagebind=args.imagebind,
        bubogpt=args.bubogpt, vicuna_dir=args.vicuna, link_llm=not args.copy_llm, allow_pickle=args.allow_pickle,
    )
    print(f"wrote {args.preset} model to {out}")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from bubogpt.reference import ReferencePipeline

    for flag in ("image", "audio"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise SystemExit(f"--{flag}: {path}: no such file")
    pipeline = ReferencePipeline.from_dir(args.weights)
    image = Path(args.image).read_bytes() if args.image else None
    audio = Path(args.audio).read_bytes() if args.audio else None
    result = pipeline.generate(args.text, image=image, audio=audio, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
                          "prompt_tokens": result.prompt_tokens, "timings": result.timings}, indent=2))
    else:
        print(result.text)
        print(f"[{len(result.token_ids)} tokens, finish={result.finish_reason}, prompt={result.prompt_tokens} positions, "
              f"encode {result.timings['encode_s']:.3f}s, generate {result.timings['generate_s']:.3f}s]", file=sys.stderr)
    return 0


def register(sub) -> None:
    info = sub.add_parser("info", help="parameter counts and shapes per component")
    info.add_argument("--preset", default="nano")
    info.add_argument("--json", action="store_true", help="print JSON to stdout")
    info.set_defaults(func=_info)

    init = sub.add_parser("init", help="write deterministic random weights of a preset in our format")
    init.add_argument("--preset", default="nano")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", required=True)
    init.set_defaults(func=_init)

    convert = sub.add_parser("convert", help="official checkpoint files -> our format")
    convert.add_argument("--preset", default="bubogpt-7b")
    convert.add_argument("--eva-vit-g", required=True, help="eva_vit_g.pth")
    convert.add_argument("--blip2", required=True, help="blip2_pretrained_flant5xxl.pth")
    convert.add_argument("--imagebind", required=True, help="imagebind_huge.pth")
    convert.add_argument("--bubogpt", required=True, help="bubogpt_7b.pth")
    convert.add_argument("--vicuna", required=True, help="Vicuna-7B Hugging Face directory")
    convert.add_argument("--out", required=True)
    convert.add_argument("--copy-llm", action="store_true", help="copy the Vicuna directory instead of linking it")
    convert.add_argument("--allow-pickle", action="store_true", help="unpickle files that weights_only loading refuses")
    convert.set_defaults(func=_convert)

    ref = sub.add_parser("reference", help="answer with the plain PyTorch reference pipeline (no server)")
    ref.add_argument("text")
    ref.add_argument("--image")
    ref.add_argument("--audio")
    ref.add_argument("--weights", help="model directory in our format (default: the built-in nano model)")
    ref.add_argument("--max-new-tokens", type=int, default=64)
    ref.add_argument("--json", action="store_true", help="print JSON to stdout")
    ref.set_defaults(func=_reference)
