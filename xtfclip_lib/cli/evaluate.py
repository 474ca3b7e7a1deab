"""`python -m xtfclip_lib evaluate`: the per-case retrieval table of a run folder.

    python -m xtfclip_lib evaluate --run results/runs/x_tfclip
    python -m xtfclip_lib evaluate --run results/runs/x_tfclip --no-mask --rerank

Features are taken from RUN/features/ when they were computed by the same checkpoint, config and
data (otherwise they are recomputed and saved), so evaluation variants cost no re-encoding.
"""
from __future__ import annotations

import argparse
import sys

from xtfclip_lib.utils import check_output_file


def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """--run, --mask, --rerank, --flip-tta, --checkpoint, --device (shared with `submit`)."""
    parser.add_argument("--run", required=True, help="run folder written by `train`")
    parser.add_argument("--mask", action=argparse.BooleanOptionalAction, default=None,
                        help="soft-biometric distance mask, added before the metrics (default: the "
                             "run's features.soft_biometric_mask)")
    parser.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                        help="k-reciprocal re-ranking (default: the run's eval.rerank)")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each tracklet's features with its mirror's (default: the "
                             "run's features.flip_tta)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best.pt (the selected epoch; last.pt when absent) or last.pt")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to compute features (default: auto)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="print the per-case retrieval table of a run",
        description=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_options(parser)
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test: case 1 + case 2 + overall; val: the held-out training "
                             "identities (aerial query, ground gallery)")
    parser.add_argument("--csv", default=None, help="also write the table (fractions) to this CSV")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from xtfclip_lib.engine import evaluate_run
    from xtfclip_lib.evaluation import METRIC_NAMES

    if args.csv:
        check_output_file(args.csv, "--csv")  # before any feature is computed

    table = evaluate_run(args.run, split=args.split, mask=args.mask, rerank=args.rerank,
                         flip_tta=args.flip_tta, checkpoint=args.checkpoint, device=args.device)
    if args.csv:
        table.to_csv(args.csv, index=False)
    percent = table.copy()
    metrics = [c for c in METRIC_NAMES if c in percent]
    percent[metrics] = percent[metrics] * 100
    sys.stdout.write(f"{args.run} ({args.split}, %):\n"
                     f"{percent.to_string(index=False, float_format=lambda v: f'{v:.2f}')}\n")
    return 0
