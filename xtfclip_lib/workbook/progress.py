"""The workbook's one progress bar, and the notebook executions it counts.

A `NotebookJob` is one notebook to execute; `WorkbookProgress` counts every cell of every job
and every training epoch (or pretraining step) from what the running notebooks write to disk.
It only displays: nothing the workbook computes depends on it.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from xtfclip_lib.utils import counter_path, read_counter, resolve
from xtfclip_lib.workbook.notebooks import NOTEBOOK_DIR
from xtfclip_lib.workbook.prepare import pretraining_target


@dataclass(eq=False)
class NotebookJob:
    """One notebook execution of the workbook (hashed by identity: each is one execution)."""
    name: str                  # notebook stem under notebooks/, e.g. "03_ablations"
    output: Path               # the executed copy: under OUT/notebooks/, a study's in its own folder
    params: dict
    epochs: int = 0            # training epochs it runs (a study: its config's train.epochs)
    counter: Path | None = None  # a `progress.StepCounter` file it writes (the tiny CLIP's pretraining)
    counter_units: int = 0     # bar steps that counter stands for

    @property
    def is_study(self) -> bool:
        """Whether it trains and scores one model of the ablation (notebook 03 with a study's parameters)."""
        return "run_name" in self.params

    @property
    def key(self) -> str:
        """Its name in the workbook's timings: the notebook, or ``03_ablations__<run>__seed<k>`` for a study."""
        p = self.params
        return f"{self.name}__{p['run_name']}__seed{p['seed']}" if self.is_study else self.name

    @property
    def label(self) -> str:
        """Name for the progress bar: ``02_backbone_pretraining``, a study ``03 loo_attention_pooling seed0``."""
        p = self.params
        return f"{self.name[:2]} {p['run_name']} seed{p['seed']}" if self.is_study else self.name


def _pretraining_counter(cfg, units: int = 10) -> dict:
    """NotebookJob fields for notebook 02 when it will pretrain the tiny CLIP (`ensure_backbone`):
    its step counter, shown as `units` steps of the workbook's bar; nothing when the weights exist."""
    target = pretraining_target(cfg, resolve)     # the workbook's working directory may be any folder
    if target is None:
        return {}
    return {"counter": counter_path(target), "counter_units": units}


class WorkbookProgress:
    """One progress bar for the whole workbook, in steps: every cell of every notebook to run
    plus every training epoch of every model to train.

    A running notebook's steps are read from disk: its executed copy (papermill saves it after
    each cell, marking the finished ones ``completed``) and, for a study, the rows of its
    ``metrics.jsonl`` (one per epoch done). The bar names the notebooks running now. It only
    displays: nothing the workbook computes depends on it.
    """

    def __init__(self, jobs: list[NotebookJob], notebooks_dir: Path = NOTEBOOK_DIR, bar=None):
        self.jobs: list[NotebookJob] = list(jobs)
        self._cells = {}
        for job in self.jobs:
            source = Path(notebooks_dir) / f"{job.name}.ipynb"
            cells = len(json.loads(source.read_text())["cells"]) if source.is_file() else 1
            self._cells[job.output] = cells + 1          # + the cell papermill injects
        self.running: list[NotebookJob] = []
        self.finished: set[Path] = set()
        self._seen: dict[Path, int] = {}
        self._lock = threading.Lock()
        self.bar = bar if bar is not None else tqdm(desc="workbook", unit="step")
        self.bar.total = self.total

    def steps(self, job: NotebookJob) -> int:
        """Steps of one notebook: its cells (+1 injected), its training epochs and its counter."""
        return self._cells[job.output] + job.epochs + job.counter_units

    @property
    def total(self) -> int:
        return sum(self.steps(job) for job in self.jobs)

    def steps_done(self, job: NotebookJob) -> int:
        """Steps of `job` done so far, from its executed copy and its metrics.jsonl; never more
        than its steps less one until it finished, never fewer than read before."""
        if job.output in self.finished:
            return self.steps(job)
        if job not in self.running:
            return 0
        cells = epochs = 0
        try:
            nb = json.loads(job.output.read_text())
            cells = sum(1 for c in nb["cells"]
                        if c.get("metadata", {}).get("papermill", {}).get("status") == "completed")
        except (OSError, ValueError, KeyError, TypeError):   # not written yet, or being written
            pass
        if job.epochs:
            metrics = Path(job.params["run_dir"]) / "metrics.jsonl"
            try:
                epochs = min(job.epochs, sum(1 for line in metrics.read_text().splitlines() if line.strip()))
            except OSError:
                pass
        if job.counter is not None:
            counted = read_counter(job.counter)
            if counted is not None:
                epochs += job.counter_units * counted[0] // counted[1]
        done = max(self._seen.get(job.output, 0), min(cells + epochs, self.steps(job) - 1))
        self._seen[job.output] = done
        return done

    def drop(self, jobs: list[NotebookJob]) -> None:
        """Leave out jobs that will not run (studies found done)."""
        with self._lock:
            self.jobs = [j for j in self.jobs if j not in jobs]
            self.bar.total = self.total
        self.refresh()

    def start(self, job: NotebookJob) -> None:
        with self._lock:
            self.running.append(job)
        self.refresh()

    def finish(self, job: NotebookJob) -> None:
        with self._lock:
            if job in self.running:
                self.running.remove(job)
            self.finished.add(job.output)
        self.refresh()

    def refresh(self) -> None:
        """Set the bar to the steps done and name the running notebooks."""
        with self._lock:
            self.bar.n = sum(self.steps_done(job) for job in self.jobs)
            self.bar.set_postfix_str("running: " + (", ".join(j.label for j in self.running) or "-"),
                                     refresh=False)
            self.bar.refresh()

    def poll(self, stop: threading.Event, every_s: float = 2.0) -> None:
        """Refresh every `every_s` seconds until `stop` is set (run in a daemon thread)."""
        while not stop.wait(every_s):
            self.refresh()

    def close(self) -> None:
        self.refresh()
        self.bar.close()
