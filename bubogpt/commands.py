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
    from bubogpt.info import describe_preset

    if args.preset not in PRESETS:
        raise SystemExit(f"--preset: unknown preset {args.preset!r}; choose from {', '.join(sorted(PRESETS))}")
    cfg = get_preset(args.preset)
    rows = describe_preset(cfg)
    total = sum(r["params"] for r in rows)
    if args.json:
        print(json.dumps({"preset": cfg.name, "components": rows, "total_params": total}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    notes = [f"* {r['component']}: the official model has {r['official_params']:,}; {r['not_built']}"
             for r in rows if r["official_params"] != r["params"]]
    table = Table(title=f"BuboGPT preset {cfg.name}", caption="\n".join(notes) or None, caption_justify="left")
    for column in ("component", "network", "params", "input", "output"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in rows:
        params = f"{row['params']:,}" + (" *" if row["official_params"] != row["params"] else "")
        table.add_row(row["component"], row["network"], params, str(row["input"]), str(row["output"]))
    table.add_row("total", "", f"{total:,}", "", "")
    Console().print(table)
    return 0


def _init(args: argparse.Namespace) -> int:
    import torch

    from bubogpt.defaults import write_random_model

    dtype = {"float32": torch.float32, "float16": torch.float16, None: None}[args.dtype]
    path = write_random_model(args.out, preset=args.preset, seed=args.seed, dtype=dtype)
    print(f"wrote {args.preset} weights (seed {args.seed}) to {path}")
    return 0


_BUBOGPT_FILES = ("eva_vit_g", "blip2", "imagebind", "bubogpt", "vicuna")
_GROUNDING_FILES = ("sam", "groundingdino", "bert", "ram")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(args: argparse.Namespace) -> int:
    from bubogpt.convert import GroundingFiles, convert_grounding, convert_official

    groups = {}
    for title, names in (("BuboGPT", _BUBOGPT_FILES), ("grounding", _GROUNDING_FILES)):
        given = [n for n in names if getattr(args, n)]
        if given and len(given) < len(names):
            missing = ", ".join(_flag(n) for n in names if n not in given)
            raise SystemExit(f"the {title} files go together: missing {missing}")
        groups[title] = bool(given)
    if not any(groups.values()):
        raise SystemExit(
            "nothing to convert: give the BuboGPT files (" + " ".join(map(_flag, _BUBOGPT_FILES)) + ") and/or the "
            "grounding files (" + " ".join(map(_flag, _GROUNDING_FILES)) + " [--ram-tag-list --ram-thresholds])"
        )
    if not groups["grounding"] and (args.ram_tag_list or args.ram_thresholds or args.grounding_preset):
        raise SystemExit("--ram-tag-list, --ram-thresholds and --grounding-preset go with the grounding files (--ram ...)")
    for flag in ("eva_vit_g", "blip2", "imagebind", "bubogpt", "sam", "groundingdino", "ram", "ram_tag_list", "ram_thresholds"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise SystemExit(f"{_flag(flag)}: {path}: no such file")
    for flag in ("vicuna", "bert"):
        path = getattr(args, flag)
        if path and not Path(path).is_dir():
            raise SystemExit(f"{_flag(flag)}: {path}: not a directory")
    grounding = None
    if groups["grounding"]:
        grounding = GroundingFiles(sam=args.sam, groundingdino=args.groundingdino, bert=args.bert, ram=args.ram,
                                   ram_tag_list=args.ram_tag_list, ram_thresholds=args.ram_thresholds)
    if groups["BuboGPT"]:
        out = convert_official(
            args.out, args.preset, eva_vit_g=args.eva_vit_g, blip2=args.blip2, imagebind=args.imagebind,
            bubogpt=args.bubogpt, vicuna_dir=args.vicuna, link_llm=not args.copy_llm, allow_pickle=args.allow_pickle,
            grounding=grounding, grounding_preset=args.grounding_preset,
        )
        print(f"wrote {args.preset} model{' with grounding' if grounding else ''} to {out}")
        return 0
    if not (Path(args.out) / "bubogpt.json").is_file():
        raise SystemExit(
            f"--out: {args.out} is not a model directory (no bubogpt.json): the grounding files alone go into an "
            "existing one (from `bubo convert` with the BuboGPT files, or `bubo init`)"
        )
    written = convert_grounding(args.out, grounding, preset=args.grounding_preset, allow_pickle=args.allow_pickle)
    print(f"wrote grounding models to {written}")
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
    info = sub.add_parser("info", help="parameter counts and shapes per network (the model and its grounding)")
    info.add_argument("--preset", default="nano")
    info.add_argument("--json", action="store_true", help="print JSON to stdout")
    info.set_defaults(func=_info)

    init = sub.add_parser("init", help="write deterministic random weights of a preset in our format")
    init.add_argument("--preset", default="nano")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", required=True)
    init.add_argument("--dtype", choices=("float32", "float16"),
                      help="tensors on disk (default: float32 for nano, float16 for the full-size presets)")
    init.set_defaults(func=_init)

    convert = sub.add_parser(
        "convert", help="official checkpoint files -> our format",
        description="The BuboGPT files (all five) into a new model directory, and/or the grounding files (RAM, "
                    "Grounding DINO + its BERT directory, SAM) into its grounding/; the grounding files alone go "
                    "into an existing model directory and replace its grounding/.",
    )
    convert.add_argument("--preset", default="bubogpt-7b", help="BuboGPT preset of the BuboGPT files")
    files = convert.add_argument_group("BuboGPT files (together)")
    files.add_argument("--eva-vit-g", help="eva_vit_g.pth")
    files.add_argument("--blip2", help="blip2_pretrained_flant5xxl.pth")
    files.add_argument("--imagebind", help="imagebind_huge.pth")
    files.add_argument("--bubogpt", help="bubogpt_7b.pth")
    files.add_argument("--vicuna", help="Vicuna-7B Hugging Face directory")
    ground = convert.add_argument_group("grounding files (together)")
    ground.add_argument("--sam", help="sam_vit_h_4b8939.pth")
    ground.add_argument("--groundingdino", help="groundingdino_swint_ogc.pth")
    ground.add_argument("--bert", help="bert-base-uncased directory (config.json, vocab.txt): the detector's text encoder")
    ground.add_argument("--ram", help="ram_swin_large_14m.pth")
    ground.add_argument("--ram-tag-list", help="RAM's ram_tag_list.txt (not in the checkpoint; the tiny preset has its own)")
    ground.add_argument("--ram-thresholds", help="RAM's ram_tag_list_threshold.txt (per-tag thresholds)")
    ground.add_argument("--grounding-preset",
                        help="grounding network sizes, official or tiny (default: the ones of the model's preset)")
    convert.add_argument("--out", required=True, help="model directory to write (grounding alone: an existing one)")
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
