"""`python -m xtfclip_lib workbook`: run the ordered notebooks headlessly into one results folder."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "workbook", help="run the notebooks in order with papermill (data, pretraining, ablations, report)",
        description="Execute notebooks/01..06 with papermill into OUT/notebooks and write the ablation "
                    "report to OUT/report/. A study finished with the same config, data and backbone is "
                    "skipped, so an interrupted workbook resumes; one made with other settings is "
                    "retrained (or refused with --refuse-stale); a failing notebook exits non-zero "
                    "naming the notebook and cell.")
    parser.add_argument("--preset", default="tiny",
                        help="config preset: tiny (CPU, minutes), quick (smoke test), paper (GPU); default tiny")
    parser.add_argument("--seeds", type=int, default=1, help="seeds trained for every study (default 1)")
    parser.add_argument("--spread-seeds", type=int, default=3,
                        help="seeds for the tf_clip and x_tfclip baselines, which measure the "
                             "seed-to-seed spread shown next to every difference (default 3)")
    parser.add_argument("--out", default="results/workbook", help="results folder (default results/workbook)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override applied to every study, e.g. train.epochs=4 (repeatable)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="studies trained side by side (default 2: two single-threaded "
                             "studies on a 2-core machine); each uses the preset's "
                             "train.num_threads, or an equal share of the CPU threads when it is 0")
    parser.add_argument("--refuse-stale", action="store_true",
                        help="stop with an error naming what differs, before any study trains, "
                             "when OUT holds studies made with other settings (default: retrain them)")
    parser.add_argument("--notebooks", default=None, help="folder of the notebooks (default: the project's notebooks/)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from xtfclip_lib.config import load_config
    from xtfclip_lib.workbook import NOTEBOOK_DIR, run_workbook

    if min(args.seeds, args.spread_seeds, args.jobs) < 1:
        raise ValueError(f"--seeds, --spread-seeds and --jobs must be >= 1, got {args.seeds}, "
                         f"{args.spread_seeds} and {args.jobs}")
    load_config(args.preset, "x_tfclip", args.overrides)  # fail fast on a bad preset or override
    logging.getLogger("papermill").setLevel(logging.WARNING)  # our own progress bar says enough
    summary = run_workbook(args.preset, args.seeds, args.out, spread_seeds=args.spread_seeds,
                           overrides=tuple(args.overrides), jobs=args.jobs,
                           refuse_stale=args.refuse_stale,
                           notebooks_dir=Path(args.notebooks) if args.notebooks else NOTEBOOK_DIR)
    log.info("workbook done: report at %s", summary["report"])
    return 0
