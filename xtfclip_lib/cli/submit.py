"""`python -m xtfclip_lib submit` (not implemented yet)."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("submit", help="(not implemented yet)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    raise RuntimeError("the 'submit' command is not implemented yet")
