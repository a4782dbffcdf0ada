"""The export layer's subcommands: `bubo export` (a Triton model repository from a model directory)
and `bubo install-triton` (the Triton server, its model environment and perf_analyzer, from PyPI)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _export(args: argparse.Namespace) -> int:
    from bubogpt.defaults import default_model_dir
    from bubogpt.weights import read_config
    from export.repository import export_model_dir

    if args.weights:
        source = Path(args.weights)
        if not (source / "bubogpt.json").is_file():
            raise SystemExit(f"--weights: {source} is not a model directory (no bubogpt.json)")
        name = read_config(source).name
        if args.preset and name != args.preset:
            raise SystemExit(f"--weights holds a {name} model, not {args.preset}")
    elif args.preset in (None, "nano"):
        source = default_model_dir()
    else:
        raise SystemExit(f"--preset {args.preset} needs --weights DIR (see `bubo convert`); only nano is built in")
    if args.onnx_threads < 0:
        raise SystemExit(f"--onnx-threads: {args.onnx_threads}: use 0 (one per core) or more")
    if args.layout is not None and args.update:
        raise SystemExit(f"--layout {args.layout}: an update keeps the repository's own layout; leave --layout out")
    if args.layout == "fused" and args.backend == "tensorrt":
        raise SystemExit("--layout fused: TensorRT repositories keep one Triton model per network (use --layout ensemble)")
    fused = None if args.layout is None else args.layout == "fused"
    out = Path(args.out)
    if args.update:
        if not (out / "bubo_repository.json").is_file():
            raise SystemExit(f"--update: {out} is not a repository written by `bubo export`")
        versions = export_model_dir(source, out, args.backend, grounding=not args.no_grounding, update=True,
                                    intra_op_threads=args.onnx_threads)  # the repository's own layout
        print(f"new versions in {out}: {versions}")
        return 0
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"--out: {out} exists and is not empty; pass --overwrite to replace it (or --update to add versions)")
    export_model_dir(source, out, args.backend, grounding=not args.no_grounding, overwrite=True,
                     intra_op_threads=args.onnx_threads, fused_embeds=fused)
    print(f"wrote Triton model repository {out}")
    return 0


def _install_triton(args: argparse.Namespace) -> int:
    from export.triton_install import install

    print(f"Triton, its model environment and perf_analyzer are in {install()}")
    return 0


def register(sub) -> None:
    export = sub.add_parser("export", help="export every network and write a Triton model repository")
    export.add_argument("--preset", default=None, help="nano (built in) or the preset of --weights")
    export.add_argument("--weights", help="model directory in our format")
    export.add_argument("--backend", choices=("onnx", "tensorrt"), default="onnx")
    export.add_argument("--out", required=True, help="repository directory to write")
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--no-grounding", action="store_true", help="leave the grounding networks out")
    export.add_argument("--onnx-threads", type=int, default=0,
                        help="ONNX Runtime threads per CPU model instance (default 0: one per core; they sleep when idle)")
    export.add_argument("--layout", choices=("fused", "ensemble"), default=None,
                        help="image_embed / audio_embed as one python model each (fused: the default with --backend onnx) "
                             "or as an ensemble of preprocess, encoder and Q-Former models (ensemble: the TensorRT layout)")
    export.add_argument("--update", action="store_true",
                        help="add the weights as new versions of an existing repository (a polling Triton loads them live)")
    export.set_defaults(func=_export)

    install = sub.add_parser("install-triton", help="install tritonserver, its python-backend environment and perf_analyzer "
                                                    "from PyPI wheels (scripts/setup.sh does this)")
    install.set_defaults(func=_install_triton)
