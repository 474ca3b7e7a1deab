"""`python -m xtfclip_lib submit`: the challenge submission CSV of a run (METHOD §5).

    python -m xtfclip_lib submit --run results/runs/x_tfclip --out submission.csv

One row per query, case 1 (aerial -> ground) first, then case 2, each with its 10 closest gallery
tracklets under the run's protocol (soft-biometric mask and re-ranking as configured, or as the
options say). Features come from RUN/features/ when their key matches.
"""
from __future__ import annotations

import argparse
import logging

from xtfclip_lib.utils import check_output_file
from xtfclip_lib.cli.evaluate import add_protocol_options

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit", help="write the challenge submission CSV of a run",
        description=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_options(parser)
    parser.add_argument("--out", required=True, help="CSV file to write, e.g. submission.csv")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    check_output_file(args.out)  # before any feature is computed: writing comes last
    from xtfclip_lib.evaluation import rank_gallery, ranking_from_indices, write_submission
    from xtfclip_lib.engine import case_distmats, run_features

    run = run_features(args.run, flip_tta=args.flip_tta, checkpoint=args.checkpoint, device=args.device)
    distmats = case_distmats(run.sets, run.lists, run.cases, run.cfg, mask=args.mask, rerank=args.rerank)
    rankings = []
    for case in run.cases:             # case 1 then case 2, as the challenge file lists them
        query, gallery = run.sets[case.query], run.sets[case.gallery]
        top = rank_gallery(distmats[case.name], k=min(10, len(gallery.names)))
        rankings.append(ranking_from_indices(query.names, gallery.names, top))
    path = write_submission(args.out, *rankings)
    logger.info("wrote %s: %d queries (%s)", path, sum(len(r) for r in rankings),
                ", ".join(f"{c.name} {len(r)}" for c, r in zip(run.cases, rankings)))
    return 0
