"""Where the workbook's trained models run: the study job, its settings, and this machine.

Every trained model of the plan (a study and seed) is one *study job*: one execution of notebook
03 with its parameters, which writes only into its own study folder (the executed notebook, the
engine's run files, ``job.log`` and the job record ``job.json``; ``done.json``, written last and
atomically, is what marks it finished). The notebooks before (01, 02) and after (04-06) run in
the driver, the ``workbook`` command itself.

- ``local`` (`LocalExecutor`, the default): `jobs` studies side by side as papermill kernels of
  the driver. With ``gpus`` ("0,1,2,3") one study per group of ``gpus_per_job`` devices runs at
  a time, its kernel seeing only those devices (``CUDA_VISIBLE_DEVICES``).
- ``slurm`` (`cluster.ClusterExecutor`): the study jobs are one submitit job array, with the
  SLURM settings of an `ExecutorConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from xtfclip_lib.config import apply_mapping, parse_override, read_yaml, with_override
from xtfclip_lib.utils import atomic_write_text
from xtfclip_lib.workbook.notebooks import execute_notebook
from xtfclip_lib.workbook.progress import NotebookJob, WorkbookProgress

log = logging.getLogger(__name__)

__all__ = ["ExecutorConfig", "load_executor_config", "device_groups", "LocalExecutor", "run_study_job",
           "job_spec", "read_record", "JOB_RECORD", "JOB_LOG"]

EXECUTOR_KINDS = ("local", "slurm")
CLUSTERS = ("slurm", "local")
JOB_RECORD = "job.json"        # in a study folder: the job's id, host, devices and state
JOB_LOG = "job.log"            # in a study folder: the job's own log, with the traceback of a failure


@dataclass(frozen=True)
class ExecutorConfig:
    """How the study jobs run; read from a YAML file and ``--set executor.KEY=VALUE`` overrides."""
    kind: str = "local"          # local: processes of this machine; slurm: a submitit job array
    gpus: str = ""               # local: CUDA devices to spread the studies over, e.g. "0,1,2,3"
    gpus_per_job: int = 1        # devices of one study (local with gpus, and slurm; 0: a CPU job);
                                 # more than 1 trains the study with torchrun, one process per device
    cluster: str = "slurm"       # slurm: submitit's SLURM executor; local: submitit's local one (a dry run)
    partition: str = ""          # sbatch --partition ("": the cluster's default)
    account: str = ""            # sbatch --account ("": none)
    cpus_per_job: int = 4        # sbatch --cpus-per-task; a preset leaving train.num_threads at 0 uses these
    mem_gb: int = 0              # sbatch --mem in GB (0: not requested)
    time_min: int = 360          # sbatch --time in minutes: one study's training and scoring
    array_parallelism: int = 0   # jobs of the array running at once (0: SLURM's limit; local: CPU count)
    sbatch: dict = field(default_factory=dict)   # extra sbatch flags, e.g. {qos: high, constraint: a100}
    setup: tuple = ()            # shell lines run before each job, e.g. "source .venv/bin/activate"
    poll_s: float = 10.0         # how often the driver looks at the queue, seconds

    def check(self) -> "ExecutorConfig":
        """Self, or a ValueError naming the first setting that cannot work."""
        if self.kind not in EXECUTOR_KINDS:
            raise ValueError(f"executor.kind={self.kind!r}; expected one of {list(EXECUTOR_KINDS)}")
        if self.cluster not in CLUSTERS:
            raise ValueError(f"executor.cluster={self.cluster!r}; expected one of {list(CLUSTERS)}")
        for name in ("gpus_per_job", "mem_gb", "array_parallelism"):
            if getattr(self, name) < 0:
                raise ValueError(f"executor.{name}={getattr(self, name)} must be >= 0")
        for name in ("cpus_per_job", "time_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"executor.{name}={getattr(self, name)} must be >= 1")
        if self.poll_s <= 0:
            raise ValueError(f"executor.poll_s={self.poll_s} must be > 0")
        if self.gpus and self.kind != "local":
            raise ValueError("executor.gpus (--gpus) picks the devices of this machine: use it with "
                             "--executor local; SLURM jobs get theirs from executor.gpus_per_job")
        if self.gpus:
            device_groups(self.gpus, self.gpus_per_job)
        bad = [key for key, value in self.sbatch.items() if isinstance(value, (dict, list))]
        if bad:
            raise ValueError(f"executor.sbatch.{bad[0]}: give a plain value (a flag's argument)")
        if not all(isinstance(line, str) for line in self.setup):
            raise ValueError("executor.setup: give a list of shell lines (strings)")
        return self


def load_executor_config(path: str | Path | None = None, overrides: list[str] = (),
                         **settings) -> ExecutorConfig:
    """Defaults, then the YAML file `path`, then ``executor.KEY=VALUE`` `overrides`, then the
    command line's shortcuts in `settings` that are not None (``kind``, ``gpus``); checked."""
    cfg = ExecutorConfig()
    if path is not None:
        cfg = apply_mapping(cfg, read_yaml(path), str(path))
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("executor."):
            raise KeyError(f"override {text!r} is not an executor setting (executor.KEY=VALUE)")
        cfg = with_override(cfg, key.removeprefix("executor."), value, "executor override")
    cfg = dataclasses.replace(cfg, **{k: v for k, v in settings.items() if v is not None})
    return cfg.check()


def device_groups(gpus: str, per_job: int) -> list[str]:
    """``"0,1,2,3"`` with 2 per job -> ``["0,1", "2,3"]``: the devices each concurrent study sees."""
    ids = [part.strip() for part in str(gpus).split(",") if part.strip()]
    if not ids or not all(i.isdigit() for i in ids):
        raise ValueError(f"--gpus {gpus!r}: give CUDA device numbers separated by commas, e.g. 0,1,2,3")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {gpus!r} names a device twice")
    per_job = max(1, per_job)
    if len(ids) % per_job:
        raise ValueError(f"--gpus {gpus!r}: {len(ids)} devices do not split into groups of "
                         f"executor.gpus_per_job={per_job}")
    return [",".join(ids[i:i + per_job]) for i in range(0, len(ids), per_job)]


# --------------------------------------------------------------------------------------------
# The job itself (in the driver for `local`, in a SLURM job or a submitit process for `slurm`)

def run_study_job(spec: dict) -> None:
    """Execute one study job: notebook 03 into its study folder, recording how it went.

    `spec` holds the notebook's ``name``, its executed copy ``output``, its ``params``, the
    ``notebooks_dir``, the ``cwd`` and optionally ``env``, variables its kernel sees on top of
    this process's (the devices of a local study). The study folder gets ``job.log`` (this job's log, with
    the traceback of a failure) and ``job.json`` (its id, host, devices and state: running, done
    or failed with the error), written atomically; a failure is raised again for submitit.
    """
    run_dir = Path(spec["params"]["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    env = spec.get("env") or {}
    record = {"job_id": _own_job_id(), "host": socket.gethostname(),
              "devices": env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "")),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(run_dir / JOB_RECORD, json.dumps({**record, "state": "running"}, indent=2))
    handler = logging.FileHandler(run_dir / JOB_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    thread = threading.get_ident()          # side by side in one driver: only this job's lines
    handler.addFilter(lambda entry: entry.thread == thread)
    root = logging.getLogger()
    if not root.handlers:                   # a job process of its own: nothing configured logging
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    log.info("study job %s on %s (devices %r): %s", record["job_id"], record["host"], record["devices"], run_dir)
    try:
        execute_notebook(spec["name"], Path(spec["output"]), spec["params"], Path(spec["notebooks_dir"]),
                         cwd=Path(spec["cwd"]), env=env or None)
    except BaseException as exc:
        trace = traceback.format_exc()
        log.error("study job failed:\n%s", trace)
        atomic_write_text(run_dir / JOB_RECORD, json.dumps(
            {**record, "state": "failed", "ended": time.strftime("%Y-%m-%d %H:%M:%S"),
             "error": f"{type(exc).__name__}: {exc}", "traceback": trace[-4000:]}, indent=2))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
    atomic_write_text(run_dir / JOB_RECORD, json.dumps(
        {**record, "state": "done", "ended": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


def _own_job_id() -> str:
    """This process's job id: ``ARRAY_TASK`` under a SLURM array, the SLURM job, the submitit
    local job (its controller's pid), or ``local-<pid>``."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or f"local-{os.getpid()}"


def job_spec(job: NotebookJob, notebooks_dir: Path) -> dict:
    """What `run_study_job` needs of a planned job: plain values only (it may cross machines)."""
    return {"name": job.name, "output": str(job.output), "params": job.params,
            "notebooks_dir": str(notebooks_dir), "cwd": str(Path.cwd())}


def read_record(run_dir: str | Path) -> dict:
    """The job record of a study folder ({} when there is none or it cannot be read)."""
    try:
        return json.loads((Path(run_dir) / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# local: papermill kernels of the driver

class LocalExecutor:
    """Runs notebook jobs in this process, one at a time or side by side, timing each
    (`timings`, seconds by `NotebookJob.key`) and telling the progress bar about each."""

    def __init__(self, progress: WorkbookProgress, notebooks_dir: Path, devices: list[str] | None = None):
        self.progress = progress
        self.notebooks_dir = notebooks_dir
        self.devices = devices            # device groups for the studies (`device_groups`), or None
        self.timings: dict[str, float] = {}

    def execute(self, job: NotebookJob, env: dict | None = None) -> None:
        """One notebook in this process (a kernel of its own, seeing `env` on top of ours)."""
        self.progress.start(job)
        start = time.perf_counter()
        if job.is_study:
            run_study_job(dict(job_spec(job, self.notebooks_dir), env=env or {}))
        else:
            execute_notebook(job.name, job.output, job.params, self.notebooks_dir, cwd=Path.cwd(), env=env)
        self.timings[job.key] = round(time.perf_counter() - start, 1)
        self.progress.finish(job)

    def run_studies(self, jobs: list[NotebookJob], workers: int) -> None:
        """Execute `jobs` on `workers` threads (one per device group when there are devices); the
        first failure cancels the jobs not yet started and is raised."""
        slots: queue.Queue | None = None
        if self.devices:
            workers = len(self.devices)
            slots = queue.Queue()
            for group in self.devices:
                slots.put(group)

        def one(job: NotebookJob) -> None:
            if slots is None:
                return self.execute(job)
            group = slots.get()
            try:
                self.execute(job, env={"CUDA_VISIBLE_DEVICES": group})
            finally:
                slots.put(group)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            for future in as_completed(futures):
                if future.exception() is not None:     # stop at the first failure, naming it
                    for other in futures:
                        other.cancel()
                    raise future.exception()
