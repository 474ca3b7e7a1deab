"""The workbook: the ordered notebooks, executed headlessly by papermill into one results folder.

``python -m xtfclip_lib workbook --preset tiny --seeds 1 --out results/workbook`` runs

1. ``01_data_exploration``   once (generates the synthetic set when it is missing);
2. ``02_backbone_pretraining`` once (pretrains the tiny CLIP when the preset needs it);
3. ``03_ablations``          once per *trained model* and seed (see `plan_training_runs`);
4. ``04_training``           once: curves and before/after of the full X-TFCLIP model;
5. ``05_retrieval_visualisation`` once, on the X-TFCLIP model;
6. ``06_ablation_report``    once: the report under ``OUT/report/``.

An executed notebook is written to ``OUT/notebooks/``, a study's into its own folder. Studies
run side by side on this machine or as SLURM jobs (`executors`). A finished study is re-used only when what
produced it is the same (`study_key`: the resolved config, the data manifest and the backbone
weights, the rule that keys the feature cache); one made with anything else is retrained, or with
``refuse_stale`` refused before any study trains. So an interrupted workbook resumes where it
stopped, and a changed ``--set`` never reports old numbers under a new label. A failing notebook stops the
workbook with an error naming the notebook and the failing cell; the partially executed copy is
kept beside the others for inspection. One driver at a time works on a results folder (the lock
file ``OUT/.workbook.lock`` names the holder).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xtfclip_lib.utils import exclusive_lock
from xtfclip_lib.workbook.cluster import JOBS_FILE, ClusterExecutor
from xtfclip_lib.workbook.executors import ExecutorConfig, LocalExecutor, device_groups
from xtfclip_lib.workbook.notebooks import NOTEBOOK_DIR, WorkbookError
from xtfclip_lib.workbook.plan import BASELINES, Study, TrainingRun, plan_studies, plan_training_runs
from xtfclip_lib.workbook.progress import NotebookJob, WorkbookProgress, _pretraining_counter
from xtfclip_lib.workbook.provenance import (StaleStudyError, data_digest, refuse_stale_message, skip_summary,
                                             study_key, study_state)

log = logging.getLogger(__name__)


LOCK_FILE = ".workbook.lock"


def run_workbook(preset: str = "tiny", seeds: int = 1, out: str | Path = "results/workbook", *,
                 spread_seeds: int = 3, overrides: tuple[str, ...] = (), jobs: int = 1,
                 notebooks_dir: Path = NOTEBOOK_DIR, studies: list[Study] | None = None,
                 refuse_stale: bool = False, executor: ExecutorConfig | None = None,
                 wait: bool = True) -> dict:
    """Run every notebook in order; return a summary (stage and notebook timings, report path).

    The summary, also written to ``OUT/workbook.json``, records the wall time of each stage
    (``stages``: data, backbone, the trained models, each closing notebook, total) and of each
    notebook (``elapsed_s``). Times are reported, never used to decide what is computed.

    `seeds` models are trained for every study; the two baselines get `max(seeds, spread_seeds)`
    so that the report always has a seed-to-seed spread to compare differences against.
    With the default `executor` (local, no GPUs) `jobs` studies train side by side. Each uses
    ``train.num_threads`` of the preset (``tiny`` fixes it at 1, so the numbers are the same on
    any machine); a preset that leaves it at 0 gets an equal share of the CPU threads (small
    models use two single-threaded processes better than one process with two threads), or on
    SLURM the job's ``executor.cpus_per_job``. With ``executor.gpus`` one study runs per device
    group; with ``executor.kind="slurm"`` the studies are SLURM jobs, and without `wait` the
    driver returns once they are submitted (``summary["pending"]``): the same call later
    waits for them, re-submits failed or missing ones and writes the report.

    Once the data and the backbone exist (after notebook 02), every model's folder is checked
    with `study_state`: a study done with an equal `study_key` is skipped, one made with other
    settings is deleted and retrained, and one line (`skip_summary`) says how many of each. With
    `refuse_stale` a stale study is a StaleStudyError instead, raised before notebook 01 when
    the differences are already visible (a changed config), at the latest before any study trains.
    """
    out = Path(out).resolve()
    executor = (executor or ExecutorConfig()).check()
    if not wait and executor.kind != "slurm":
        raise ValueError("not waiting (--no-wait) needs --executor slurm: local studies run in this process")
    studies = plan_studies() if studies is None else studies
    runs = plan_training_runs(studies)
    plan = _plan_jobs(preset, seeds, out, runs, spread_seeds=spread_seeds, overrides=overrides, jobs=jobs,
                      executor=executor)
    if executor.kind == "slurm":
        ClusterExecutor(executor, out, None, notebooks_dir).check()    # before anything is written
    with exclusive_lock(out / LOCK_FILE, f"another workbook is driving {out}"):
        return _drive(plan, out, executor, notebooks_dir, refuse_stale=refuse_stale, wait=wait,
                      summary={"preset": preset, "seeds": seeds, "spread_seeds": spread_seeds, "jobs": jobs,
                               "executor": executor.kind, "studies": [s.name for s in studies],
                               "training_runs": len(runs)})


def _drive(plan: "_Plan", out: Path, executor: ExecutorConfig, notebooks_dir: Path, *, refuse_stale: bool,
           wait: bool, summary: dict) -> dict:
    """`run_workbook` once its plan is made, holding the results folder's lock."""
    if refuse_stale and any(Path(j.params["run_dir"]).exists() for j in plan.ablations):
        _refuse(plan, _study_states(plan), out, ready=False)
    from tqdm.contrib.logging import logging_redirect_tqdm

    progress = WorkbookProgress([*plan.before, *plan.ablations, *plan.after], notebooks_dir)
    local = LocalExecutor(progress, notebooks_dir,
                          device_groups(executor.gpus, executor.gpus_per_job) if executor.gpus else None)
    cluster = ClusterExecutor(executor, out, progress, notebooks_dir) if executor.kind == "slurm" else None
    stop = threading.Event()
    poller = threading.Thread(target=progress.poll, args=(stop,), daemon=True)
    stages: dict[str, float] = {}
    started = time.perf_counter()
    poller.start()
    try:
        with logging_redirect_tqdm():        # log lines print above the bar, never through it
            found, todo, pending = _execute(plan, local, cluster, stages, out, jobs=summary["jobs"],
                                            refuse_stale=refuse_stale, wait=wait)
            stages["total"] = round(time.perf_counter() - started, 1)
    finally:
        stop.set()
        poller.join()
        progress.close()
    summary = {**summary, "skipped_done": len(plan.ablations) - len(todo),
               "retrained_stale": sum(1 for state, _ in found.values() if state == "stale"),
               "stages": stages, "elapsed_s": local.timings,
               "report": None if pending else str(out / "report" / "ablation.md")}
    if pending:
        summary["pending"] = pending
    (out / "workbook.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class _Plan:
    """The notebook executions of one workbook, in the order they run."""
    before: list[NotebookJob]           # 01 and 02: the data and the backbone
    ablations: list[NotebookJob]        # 03: one per trained model and seed
    after: list[NotebookJob]            # 04, 05 and 06: on the finished studies
    configs: dict[Path, object]         # each study's resolved config, by its job's output


def _plan_jobs(preset: str, seeds: int, out: Path, runs: list[TrainingRun], *, spread_seeds: int,
               overrides: tuple[str, ...], jobs: int, executor: ExecutorConfig = ExecutorConfig()) -> _Plan:
    """Every notebook job of the workbook and its parameters (`run_workbook`'s arguments).

    A study's notebook is executed into its own folder (``studies/<study>/seed<k>/03_ablations.ipynb``),
    so a study job writes nowhere else. `_study_threads` is the thread rule of `run_workbook`."""
    from xtfclip_lib.config import load_config

    nb_out = out / "notebooks"
    full_model = load_config(preset, "x_tfclip", overrides)
    common = {"preset": preset, "overrides": list(overrides), "out_dir": str(out)}
    before = [NotebookJob("01_data_exploration", nb_out / "01_data_exploration.ipynb", dict(common)),
              NotebookJob("02_backbone_pretraining", nb_out / "02_backbone_pretraining.ipynb", dict(common),
                          **_pretraining_counter(full_model))]
    threads = _study_threads(full_model.train.num_threads, jobs, executor)
    processes = executor.gpus_per_job if (executor.kind == "slurm" or executor.gpus) else 1
    ablations, configs = [], {}
    for run in runs:
        num = max(seeds, spread_seeds) if run.name in BASELINES else seeds
        for seed in range(num):
            params = dict(common, overrides=[*overrides, *threads], run_name=run.name,
                          variant=run.variant, train_overrides=list(run.overrides), seed=seed,
                          run_dir=str(run.folder(out, seed)), processes=max(1, processes))
            cfg = load_config(preset, run.variant, [*params["overrides"], *run.overrides, f"train.seed={seed}"])
            job = NotebookJob("03_ablations", run.folder(out, seed) / "03_ablations.ipynb",
                              params, epochs=cfg.train.epochs)
            ablations.append(job)
            configs[job.output] = cfg
    x_run = TrainingRun("x_tfclip", "x_tfclip").folder(out, 0)
    after = [NotebookJob("04_training", nb_out / "04_training.ipynb", {"run_dir": str(x_run), "out_dir": str(out)}),
             NotebookJob("05_retrieval_visualisation", nb_out / "05_retrieval_visualisation.ipynb",
                         {"run_dir": str(x_run), "out_dir": str(out)}),
             NotebookJob("06_ablation_report", nb_out / "06_ablation_report.ipynb",
                         dict(common, studies_dir=str(out)))]
    return _Plan(before, ablations, after, configs)


def _study_threads(preset_threads: int, jobs: int, executor: ExecutorConfig) -> list[str]:
    """The thread override of every study: none when the preset fixes ``train.num_threads`` (or
    the studies run on GPUs of this machine); else the SLURM job's CPUs, or an equal share of
    this machine's threads when `jobs` > 1 studies share it."""
    if preset_threads != 0 or executor.gpus:
        return []
    if executor.kind == "slurm":
        return [f"train.num_threads={executor.cpus_per_job}"]
    return [f"train.num_threads={max(1, (os.cpu_count() or 1) // jobs)}"] if jobs > 1 else []


def _study_states(plan: _Plan) -> dict[Path, tuple[str, list[str]]]:
    """`study_state` of every model to train, by its job's output."""
    digests: dict[str, str] = {}
    found = {}
    for job in plan.ablations:
        cfg = plan.configs[job.output]
        if str(cfg.data.root) not in digests:
            digests[str(cfg.data.root)] = data_digest(cfg.data.root)
        found[job.output] = study_state(job.params["run_dir"], cfg,
                                        study_key(cfg, data=digests[str(cfg.data.root)]))
    return found


def _refuse(plan: _Plan, found: dict[Path, tuple[str, list[str]]], out: Path, ready: bool) -> None:
    """StaleStudyError on any stale study. Before notebook 02 (not `ready`) a data set or
    backbone still to be made ("-> missing") is judged afterwards, once it exists."""
    stale = [(Path(job.params["run_dir"]), [d for d in found[job.output][1]
                                            if ready or not d.endswith("-> missing")])
             for job in plan.ablations if found[job.output][0] == "stale"]
    stale = [(folder, differences) for folder, differences in stale if differences]
    if stale:
        raise StaleStudyError(refuse_stale_message(stale, out))


def _execute(plan: _Plan, local: LocalExecutor, cluster: ClusterExecutor | None, stages: dict[str, float],
             out: Path, *, jobs: int, refuse_stale: bool, wait: bool
             ) -> tuple[dict[Path, tuple[str, list[str]]], list[NotebookJob], list[dict]]:
    """Execute the planned notebooks in order, recording each stage's wall time in `stages`.

    Between notebook 02 and the studies, every study's folder is judged (`study_state`): stale
    ones are refused (`refuse_stale`) or removed to be retrained, done ones are skipped. The
    studies run in `local` or, given one, as the jobs of `cluster`; the closing notebooks run
    once every study is done. Returns the states, the studies run and those still pending (only
    when not waiting for SLURM jobs).
    """
    for job in plan.before:
        local.execute(job)
    stages["synthetic set and exploration (01)"] = local.timings[plan.before[0].key]
    stages["backbone pretraining (02)"] = local.timings[plan.before[1].key]
    found = _study_states(plan)
    if refuse_stale:
        _refuse(plan, found, out, ready=True)
    busy = _busy_folders(out, cluster)
    for job in plan.ablations:
        folder = Path(job.params["run_dir"]).relative_to(out).as_posix()
        if folder in busy and (found[job.output][0] == "stale" or cluster is None):
            raise WorkbookError(
                f"{folder} is being trained by SLURM job {busy[folder]}, submitted by an earlier workbook"
                + (" with other settings" if found[job.output][0] == "stale" else "")
                + f": wait for it, cancel it (scancel {busy[folder]}), or collect it with the same "
                  f"--executor slurm options")
        if found[job.output][0] == "stale":
            log.warning("%s was made with other settings (%s): retraining it",
                        folder, "; ".join(found[job.output][1]))
            shutil.rmtree(job.params["run_dir"])
    log.info("%s", skip_summary(list(found.values())))
    todo = [job for job in plan.ablations if found[job.output][0] != "done"]
    local.progress.drop([job for job in plan.ablations if job not in todo])
    phase = time.perf_counter()
    pending: list[dict] = []
    if cluster is None:
        local.run_studies(todo, max(1, jobs))
        how = f"{len(local.devices)} device groups" if local.devices else f"{max(1, jobs)} side by side"
    else:
        outcome = cluster.run(todo, wait=wait) if todo else None
        how = "as SLURM jobs" if cluster.cfg.cluster == "slurm" else "as submitit local jobs"
        if outcome is not None and outcome.failed:
            raise WorkbookError(_failure_summary(outcome.failed, len(todo)))
        if outcome is not None and outcome.pending:
            log.info("%d study jobs queued or running (%s); run the same command again to collect them "
                     "and write the report", len(outcome.pending),
                     ", ".join(p["job_id"] for p in outcome.pending))
            return found, todo, outcome.pending
    stages[f"trained models (03, {len(todo)} of {len(plan.ablations)}, {how})"] = round(
        time.perf_counter() - phase, 1)
    for job in plan.after:
        local.execute(job)
        stages[job.name] = local.timings[job.key]
    return found, todo, pending


def _busy_folders(out: Path, cluster: ClusterExecutor | None) -> dict[str, str]:
    """Study folders whose SLURM job (from ``OUT/slurm/jobs.json``) is still queued or running."""
    if cluster is not None:
        return cluster.in_flight()
    if not (out / JOBS_FILE).is_file():
        return {}
    return ClusterExecutor(ExecutorConfig(kind="slurm"), out, None, NOTEBOOK_DIR).in_flight()


def _failure_summary(failed: list[dict], total: int) -> str:
    """The driver's account of failed study jobs: each folder with its job id and last error lines."""
    lines = [f"{len(failed)} of {total} study jobs failed; their partial notebooks and job.log are kept in "
             f"their folders, and running the same command again re-submits only them:"]
    for failure in failed:
        lines.append(f"  {failure['folder']} (job {failure['job_id']}):")
        lines += [f"    {line}" for line in failure["error"].splitlines()]
    return "\n".join(lines)
