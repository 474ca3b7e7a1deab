"""`python -m xtfclip_lib synth` (not implemented yet)."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="(not implemented yet)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    raise RuntimeError("the 'synth' command is not implemented yet")
