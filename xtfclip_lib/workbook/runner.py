"""The workbook: the ordered notebooks, executed headlessly by papermill into one results folder.

``python -m xtfclip_lib workbook --preset tiny --seeds 1 --out results/workbook`` runs

1. ``01_data_exploration``   once (generates the synthetic set when it is missing);
2. ``02_backbone_pretraining`` once (pretrains the tiny CLIP when the preset needs it);
3. ``03_ablations``          once per *trained model* and seed (see `plan_training_runs`);
4. ``04_training``           once: curves and before/after of the full X-TFCLIP model;
5. ``05_retrieval_visualisation`` once, on the X-TFCLIP model;
6. ``06_ablation_report``    once: the report under ``OUT/report/``.

An executed notebook is written to ``OUT/notebooks/``. A finished study is re-used only when what
produced it is the same (`study_key`: the resolved config, the data manifest and the backbone
weights, the rule that keys the feature cache); one made with anything else is retrained, or with
``refuse_stale`` refused before any study trains. So an interrupted workbook resumes where it
stopped, and a changed ``--set`` never reports old numbers under a new label. A failing notebook stops the
workbook with an error naming the notebook and the failing cell; the partially executed copy is
kept beside the others for inspection.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from xtfclip_lib.workbook.notebooks import NOTEBOOK_DIR, execute_notebook
from xtfclip_lib.workbook.plan import BASELINES, Study, TrainingRun, plan_studies, plan_training_runs
from xtfclip_lib.workbook.progress import NotebookJob, WorkbookProgress, _pretraining_counter
from xtfclip_lib.workbook.provenance import (StaleStudyError, data_digest, refuse_stale_message, skip_summary,
                                             study_key, study_state)

log = logging.getLogger(__name__)


def run_workbook(preset: str = "tiny", seeds: int = 1, out: str | Path = "results/workbook", *,
                 spread_seeds: int = 3, overrides: tuple[str, ...] = (), jobs: int = 1,
                 notebooks_dir: Path = NOTEBOOK_DIR, studies: list[Study] | None = None,
                 refuse_stale: bool = False) -> dict:
    """Run every notebook in order; return a summary (stage and notebook timings, report path).

    The summary, also written to ``OUT/workbook.json``, records the wall time of each stage
    (``stages``: data, backbone, the trained models, each closing notebook, total) and of each
    notebook (``elapsed_s``). Times are reported, never used to decide what is computed.

    `seeds` models are trained for every study; the two baselines get `max(seeds, spread_seeds)`
    so that the report always has a seed-to-seed spread to compare differences against.
    `jobs` studies train side by side. Each uses ``train.num_threads`` of the preset (``tiny``
    fixes it at 1, so the numbers are the same on any machine); a preset that leaves it at 0 gets
    an equal share of the CPU threads (small models use two single-threaded processes better than
    one process with two threads).

    Once the data and the backbone exist (after notebook 02), every model's folder is checked
    with `study_state`: a study done with an equal `study_key` is skipped, one made with other
    settings is deleted and retrained, and one line (`skip_summary`) says how many of each. With
    `refuse_stale` a stale study is a StaleStudyError instead, raised before notebook 01 when
    the differences are already visible (a changed config), at the latest before any study trains.
    """
    out = Path(out).resolve()
    studies = plan_studies() if studies is None else studies
    runs = plan_training_runs(studies)
    plan = _plan_jobs(preset, seeds, out, runs, spread_seeds=spread_seeds, overrides=overrides, jobs=jobs)
    if refuse_stale and any(Path(j.params["run_dir"]).exists() for j in plan.ablations):
        _refuse(plan, _study_states(plan), out, ready=False)

    from tqdm.contrib.logging import logging_redirect_tqdm

    progress = WorkbookProgress([*plan.before, *plan.ablations, *plan.after], notebooks_dir)
    executor = _Executor(progress, notebooks_dir)
    stop = threading.Event()
    poller = threading.Thread(target=progress.poll, args=(stop,), daemon=True)
    stages: dict[str, float] = {}
    started = time.perf_counter()
    poller.start()
    try:
        with logging_redirect_tqdm():        # log lines print above the bar, never through it
            found, todo = _execute(plan, executor, stages, out, jobs=jobs, refuse_stale=refuse_stale)
            stages["total"] = round(time.perf_counter() - started, 1)
    finally:
        stop.set()
        poller.join()
        progress.close()
    summary = {"preset": preset, "seeds": seeds, "spread_seeds": spread_seeds, "jobs": jobs,
               "studies": [s.name for s in studies], "training_runs": len(runs),
               "skipped_done": len(plan.ablations) - len(todo),
               "retrained_stale": sum(1 for state, _ in found.values() if state == "stale"),
               "stages": stages, "elapsed_s": executor.timings,
               "report": str(out / "report" / "ablation.md")}
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
               overrides: tuple[str, ...], jobs: int) -> _Plan:
    """Every notebook job of the workbook and its parameters (`run_workbook`'s arguments)."""
    from xtfclip_lib.config import load_config

    nb_out = out / "notebooks"
    full_model = load_config(preset, "x_tfclip", overrides)
    common = {"preset": preset, "overrides": list(overrides), "out_dir": str(out)}
    before = [NotebookJob("01_data_exploration", nb_out / "01_data_exploration.ipynb", dict(common)),
              NotebookJob("02_backbone_pretraining", nb_out / "02_backbone_pretraining.ipynb", dict(common),
                          **_pretraining_counter(full_model))]
    preset_threads = full_model.train.num_threads
    threads = ([f"train.num_threads={max(1, (os.cpu_count() or 1) // jobs)}"]
               if jobs > 1 and preset_threads == 0 else [])
    ablations, configs = [], {}
    for run in runs:
        num = max(seeds, spread_seeds) if run.name in BASELINES else seeds
        for seed in range(num):
            params = dict(common, overrides=[*overrides, *threads], run_name=run.name,
                          variant=run.variant, train_overrides=list(run.overrides), seed=seed,
                          run_dir=str(run.folder(out, seed)))
            cfg = load_config(preset, run.variant, [*params["overrides"], *run.overrides, f"train.seed={seed}"])
            job = NotebookJob("03_ablations", nb_out / f"03_ablations__{run.name}__seed{seed}.ipynb",
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


class _Executor:
    """Executes notebook jobs one at a time or side by side, timing each (`timings`, seconds by
    the executed copy's stem) and telling the progress bar when each starts and finishes."""

    def __init__(self, progress: WorkbookProgress, notebooks_dir: Path):
        self.progress = progress
        self.notebooks_dir = notebooks_dir
        self.timings: dict[str, float] = {}

    def execute(self, job: NotebookJob) -> None:
        self.progress.start(job)
        start = time.perf_counter()
        execute_notebook(job.name, job.output, job.params, self.notebooks_dir, cwd=Path.cwd())
        self.timings[job.output.stem] = round(time.perf_counter() - start, 1)
        self.progress.finish(job)

    def side_by_side(self, jobs: list[NotebookJob], workers: int) -> None:
        """Execute `jobs` on `workers` threads; the first failure cancels the rest and is raised."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self.execute, job) for job in jobs]
            for future in as_completed(futures):
                if future.exception() is not None:     # stop at the first failure, naming it
                    for other in futures:
                        other.cancel()
                    raise future.exception()


def _execute(plan: _Plan, executor: _Executor, stages: dict[str, float], out: Path, *, jobs: int,
             refuse_stale: bool) -> tuple[dict[Path, tuple[str, list[str]]], list[NotebookJob]]:
    """Execute the planned notebooks in order, recording each stage's wall time in `stages`.

    Between notebook 02 and the studies, every study's folder is judged (`study_state`): stale
    ones are refused (`refuse_stale`) or removed to be retrained, done ones are skipped. Returns
    those states and the studies that ran.
    """
    for job in plan.before:
        executor.execute(job)
    stages["synthetic set and exploration (01)"] = executor.timings[plan.before[0].output.stem]
    stages["backbone pretraining (02)"] = executor.timings[plan.before[1].output.stem]
    found = _study_states(plan)
    if refuse_stale:
        _refuse(plan, found, out, ready=True)
    for job in plan.ablations:
        if found[job.output][0] == "stale":
            log.warning("%s was made with other settings (%s): retraining it",
                        Path(job.params["run_dir"]).relative_to(out), "; ".join(found[job.output][1]))
            shutil.rmtree(job.params["run_dir"])
    log.info("%s", skip_summary(list(found.values())))
    todo = [job for job in plan.ablations if found[job.output][0] != "done"]
    executor.progress.drop([job for job in plan.ablations if job not in todo])
    phase = time.perf_counter()
    executor.side_by_side(todo, max(1, jobs))
    stages[f"trained models (03, {len(todo)} of {len(plan.ablations)}, {max(1, jobs)} side by side)"] = round(
        time.perf_counter() - phase, 1)
    for job in plan.after:
        executor.execute(job)
        stages[job.name] = executor.timings[job.output.stem]
    return found, todo
