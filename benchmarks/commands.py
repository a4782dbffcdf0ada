"""`bubo bench`: run a benchmark suite and write benchmarks/results/<suite>-<timestamp>/.

    bubo bench --suite e2e --quick               # served stack vs baseline, minutes
    bubo bench --suite soak                      # 1000 mixed requests with faults (kills, SIGSTOP, cancels, garbage)
    bubo bench --suite entities                  # phrase -> mask: entities while the answer is written, or after it
    bubo bench --suite split                     # the tiers as separate processes vs one `bubo serve`, same requests
    python -m benchmarks.commands --suite perf   # the same without the `bubo` entry point

Registered by the `bubo` command (bubo_cli/main.py). Paths given on the command line are made
absolute here, so they mean the same in the load generator's subprocess as in this process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _levels(text: str) -> list[int]:
    from benchmarks.loadgen import parse_levels

    return parse_levels(text)


def _bench(args: argparse.Namespace) -> int:
    # the load generator runs in a subprocess with another working directory: absolute paths only
    for name in ("out", "cache_dir", "weights"):
        if getattr(args, name, None):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    from benchmarks.suites import SuiteOptions, SuiteSettings, run_suite

    if args.suite == "soak":
        from benchmarks.soak import SoakSettings, main_soak

        settings = SoakSettings(requests=args.soak_requests, concurrency=args.soak_concurrency, seed=args.seed or 0)
        directory = main_soak(Path(args.out), settings, Path(args.cache_dir) if args.cache_dir else None)
        print((directory / "results.md").read_text())
        print(f"results: {directory}")
        return 0
    if args.suite == "entities":
        from benchmarks.entity_stream import EntitySettings, main_entities

        settings = EntitySettings.quick() if args.quick else EntitySettings()
        if args.entity_images:
            settings.images = args.entity_images
        if args.max_new_tokens:
            settings.max_new_tokens = args.max_new_tokens
        directory = main_entities(Path(args.out), settings, Path(args.cache_dir) if args.cache_dir else None)
        print((directory / "results.md").read_text())
        print(f"results: {directory}")
        return 0
    if args.suite == "split":
        from benchmarks.split_topology import main as main_split

        argv = ["--out", args.out] + (["--cache-dir", args.cache_dir] if args.cache_dir else []) + (["--quick"] if args.quick else [])
        if args.concurrency:
            argv += ["--concurrency", ",".join(str(c) for c in args.concurrency)]
        if args.time_cap_s:
            argv += ["--time-cap", str(args.time_cap_s)]
        return main_split(argv)
    if args.suite == "quick":  # the whole comparison with short settings: minutes on a CPU machine
        args.suite, args.quick = "all", True
    settings = SuiteSettings.quick() if args.quick else SuiteSettings()
    for name in ("concurrency", "time_cap_s", "max_new_tokens", "max_requests", "seed", "perf_concurrency",
                 "perf_grounding_concurrency", "grounding_effect_requests"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(settings, name, value)
    settings.ground_levels = args.ground_levels
    options = SuiteOptions(suite=args.suite, out=Path(args.out), quick=args.quick,
                           weights=Path(args.weights) if args.weights else None, device=args.device,
                           settings=settings, **({"cache_dir": Path(args.cache_dir)} if args.cache_dir else {}))
    directory = run_suite(options)
    print((directory / "results.md").read_text())
    print(f"results, JSON and plots: {directory}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Registers `bench` on an argparse subparsers object."""
    bench = subparsers.add_parser("bench", help="benchmarks: served stack vs baseline, Triton encoders (perf_analyzer)",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--suite", choices=("quick", "e2e", "perf", "baseline", "all", "soak", "entities", "split"), default="e2e",
                       help="quick = all with --quick; soak = mixed load with faults (benchmarks/soak.py); "
                            "entities = phrase -> mask latency (benchmarks/entity_stream.py); "
                            "split = separate tiers vs one process (benchmarks/split_topology.py)")
    bench.add_argument("--soak-requests", type=int, default=1000, help="soak: requests in the schedule")
    bench.add_argument("--soak-concurrency", type=int, default=16, help="soak: concurrent clients")
    bench.add_argument("--entity-images", type=int, help="entities: pictures per pass (default 16, --quick 4)")
    bench.add_argument("--out", default="benchmarks/results", help="results root (a <suite>-<timestamp>/ folder is made)")
    bench.add_argument("--quick", action="store_true", help="fewer requests and tokens, short perf windows")
    bench.add_argument("--weights", help="model directory (default: the built-in nano model)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--cache-dir", help="where exported Triton repositories are cached (default ~/.cache/bubogpt)")
    bench.add_argument("--concurrency", type=_levels, help="e2e levels, e.g. 1,2,4,8,16,32")
    bench.add_argument("--perf-concurrency", type=_levels, help="perf_analyzer levels, e.g. 1,2,4,8,16")
    bench.add_argument("--perf-grounding-concurrency", type=_levels,
                       help="perf_analyzer levels for the grounding ensemble (default 1,4; --quick: none)")
    bench.add_argument("--time-cap", dest="time_cap_s", type=float, help="seconds per level")
    bench.add_argument("--max-new-tokens", type=int)
    bench.add_argument("--max-requests", type=int, help="requests per level at most")
    bench.add_argument("--seed", type=int)
    bench.add_argument("--ground-levels", action="store_true",
                       help="ground every image request in the levels, served and baseline (slow on CPU)")
    bench.add_argument("--grounding-effect-requests", type=int,
                       help="image requests run one at a time without and with grounding (0: skip)")
    bench.set_defaults(func=_bench)
    return bench


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log-level", default="WARNING")
    known, rest = pre.parse_known_args(argv if argv is not None else sys.argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commands")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *rest])
    logging.basicConfig(level=getattr(logging, known.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
