"""`python -m xtfclip_lib pretrain-clip` (not implemented yet)."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain-clip", help="(not implemented yet)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    raise RuntimeError("the 'pretrain-clip' command is not implemented yet")
