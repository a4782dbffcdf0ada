"""The `bubo` command line: one entry point, each layer's subcommands.

User errors (a missing file, an unknown preset, an existing output folder...) are one line on
stderr and exit code 2; `--log-level DEBUG` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

USER_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    import benchmarks.commands
    import bubo_cli.evaluate
    import bubogpt.commands
    import export.commands
    import serving.commands
    import training.commands

    parser = argparse.ArgumentParser(prog="bubo", description="BuboGPT inference service")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("plain", "json"), default="plain", help="json: one object per line")
    sub = parser.add_subparsers(dest="command", required=True)
    for layer in (bubogpt.commands, export.commands, serving.commands, training.commands, bubo_cli.evaluate,
                  benchmarks.commands):
        layer.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from serving.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return args.func(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):  # `raise SystemExit("what is wrong")`: a user error
            return _user_error(args, exc.code, exc)
        raise
    except BrokenPipeError:  # `bubo info --json | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:
        if isinstance(exc, user_errors()):
            return _user_error(args, str(exc), exc)
        raise


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user's own input causes: files that are missing or not what they should be."""
    from bubogpt.audio_features import AudioDecodeError
    from bubogpt.image import ImageDecodeError
    from bubogpt.official_checkpoints import CheckpointError
    from bubogpt.prompt import PromptError
    from bubogpt.weights import WeightsError

    return USER_ERRORS + (WeightsError, CheckpointError, PromptError, ImageDecodeError, AudioDecodeError)


def _user_error(args: argparse.Namespace, message: str, exc: BaseException) -> int:
    logging.getLogger("bubo").debug("user error", exc_info=exc)
    print(f"bubo {args.command}: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
