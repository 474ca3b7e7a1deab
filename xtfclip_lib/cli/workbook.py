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
                    "naming the notebook and cell. The trained models run on this machine "
                    "(--jobs side by side, or one per GPU with --gpus) or as SLURM jobs "
                    "(--executor slurm).")
    parser.add_argument("--preset", default="tiny",
                        help="config preset: tiny (CPU, minutes), quick (smoke test), paper (GPU); default tiny")
    parser.add_argument("--seeds", type=int, default=1, help="seeds trained for every study (default 1)")
    parser.add_argument("--spread-seeds", type=int, default=3,
                        help="seeds for the tf_clip and x_tfclip baselines, which measure the "
                             "seed-to-seed spread shown next to every difference (default 3)")
    parser.add_argument("--out", default="results/workbook", help="results folder (default results/workbook)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override applied to every study, e.g. train.epochs=4 (repeatable)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local executor: studies trained side by side (default 2: two "
                             "single-threaded studies on a 2-core machine); each uses the preset's "
                             "train.num_threads, or an equal share of the CPU threads when it is 0")
    parser.add_argument("--executor", choices=("local", "slurm"), default=None,
                        help="where the trained models run: local (default: processes of this machine) "
                             "or slurm (one job per model and seed, a submitit job array); the "
                             "notebooks before and after them run here")
    parser.add_argument("--executor-config", default=None, metavar="YAML",
                        help="executor settings (partition, account, gpus_per_job, cpus_per_job, "
                             "mem_gb, time_min, array_parallelism, sbatch flags, setup lines); "
                             "--set executor.KEY=VALUE overrides them")
    parser.add_argument("--gpus", default=None, metavar="LIST",
                        help="local executor: CUDA devices to spread the studies over, e.g. 0,1,2,3: "
                             "one study per device (or per executor.gpus_per_job devices) at a time, "
                             "each seeing only its own")
    parser.add_argument("--no-wait", action="store_true",
                        help="slurm: submit the jobs, print their ids and return; the same command "
                             "later waits for what still runs, re-submits failed or missing "
                             "studies and writes the report")
    parser.add_argument("--refuse-stale", action="store_true",
                        help="stop with an error naming what differs, before any study trains, "
                             "when OUT holds studies made with other settings (default: retrain them)")
    parser.add_argument("--notebooks", default=None, help="folder of the notebooks (default: the project's notebooks/)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from xtfclip_lib.config import load_config
    from xtfclip_lib.workbook import NOTEBOOK_DIR, load_executor_config, run_workbook

    jobs = 2 if args.jobs is None else args.jobs
    if min(args.seeds, args.spread_seeds, jobs) < 1:
        raise ValueError(f"--seeds, --spread-seeds and --jobs must be >= 1, got {args.seeds}, "
                         f"{args.spread_seeds} and {jobs}")
    executor_overrides = [o for o in args.overrides if o.strip().startswith("executor.")]
    overrides = [o for o in args.overrides if o not in executor_overrides]
    executor = load_executor_config(args.executor_config, executor_overrides, kind=args.executor, gpus=args.gpus)
    if args.jobs is not None and (executor.gpus or executor.kind == "slurm"):
        raise ValueError("--jobs sets how many studies share this machine's CPUs; with --gpus there is one "
                         "per device group, on SLURM one per job: drop --jobs")
    load_config(args.preset, "x_tfclip", overrides)  # fail fast on a bad preset or override
    logging.getLogger("papermill").setLevel(logging.WARNING)  # our own progress bar says enough
    summary = run_workbook(args.preset, args.seeds, args.out, spread_seeds=args.spread_seeds,
                           overrides=tuple(overrides), jobs=jobs, refuse_stale=args.refuse_stale,
                           notebooks_dir=Path(args.notebooks) if args.notebooks else NOTEBOOK_DIR,
                           executor=executor, wait=not args.no_wait)
    if summary.get("pending"):
        log.info("%d study jobs submitted or still running: %s", len(summary["pending"]),
                 " ".join(p["job_id"] for p in summary["pending"]))
    else:
        log.info("workbook done: report at %s", summary["report"])
    return 0
