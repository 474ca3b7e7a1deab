"""Command line: ``python -m xtfclip_lib COMMAND --help``.

Each command lives in its own module under `xtfclip_lib.cli` and registers a sub-parser; a
failing command exits non-zero with a one-line message naming the cause (use ``--debug`` for the
traceback).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("synth", "pretrain_clip", "train", "evaluate", "submit", "workbook")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xtfclip_lib",
        description="X-TFCLIP workbook: synthetic data, tiny-CLIP pretraining, training, "
                    "evaluation, challenge submission and the papermill workbook.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"xtfclip_lib.cli.{name}").register(sub)
    for command in sub.choices.values():   # also after the command name: `train ... --debug`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback on errors")
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="only warnings and errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        logging.getLogger("xtfclip_lib").error("interrupted")
        return 130
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        if args.debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
