"""Where the workbook's trained models run: side by side on this machine, or as SLURM jobs.

Every trained model of the plan (a study and seed) is one *study job*: one execution of notebook
03 with its parameters, which writes only into its own study folder (the executed notebook, the
engine's run files, ``job.log`` and the job record ``job.json``; ``done.json``, written last and
atomically, is what marks it finished). The notebooks before (01, 02) and after (04-06) run in
the driver, the ``workbook`` command itself.

- ``local`` (`LocalExecutor`, the default): `jobs` studies side by side as papermill kernels of
  the driver. With ``gpus`` ("0,1,2,3") one study per group of ``gpus_per_job`` devices runs at
  a time, its kernel seeing only those devices (``CUDA_VISIBLE_DEVICES``).
- ``slurm`` (`ClusterExecutor`): the study jobs are one submitit job array, with the partition,
  account, GPUs and CPUs per job, memory, time limit, array parallelism, extra ``sbatch`` flags
  and setup lines of an `ExecutorConfig`. The driver watches the queue with ``squeue`` and the
  jobs' own records, never ``sacct``, so clusters without accounting work too, and a cancelled
  or timed-out job is seen as ended. ``cluster: local`` runs the same jobs through submitit's
  local executor (processes of this machine, no queue): a dry run of the cluster path. Submitted
  jobs are listed in ``OUT/slurm/jobs.json``, so a later driver waits for those still queued or
  running and re-submits only failed or missing ones.
"""
from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from xtfclip_lib.config import apply_mapping, parse_override, read_yaml, with_override
from xtfclip_lib.utils import atomic_write_text
from xtfclip_lib.workbook.notebooks import WorkbookError, execute_notebook
from xtfclip_lib.workbook.progress import NotebookJob, WorkbookProgress

log = logging.getLogger(__name__)

__all__ = ["ExecutorConfig", "load_executor_config", "device_groups", "LocalExecutor", "ClusterExecutor",
           "run_study_job", "JOB_RECORD", "JOB_LOG", "JOBS_FILE"]

EXECUTOR_KINDS = ("local", "slurm")
CLUSTERS = ("slurm", "local")
JOB_RECORD = "job.json"        # in a study folder: the job's id, host, devices and state
JOB_LOG = "job.log"            # in a study folder: the job's own log, with the traceback of a failure
JOBS_FILE = Path("slurm") / "jobs.json"   # under OUT: every submitted study job, by study folder
_LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
                "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}


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


# --------------------------------------------------------------------------------------------
# slurm: a submitit job array, watched through squeue and the jobs' records

@dataclass
class ClusterOutcome:
    """What became of the study jobs a `ClusterExecutor.run` was given."""
    finished: list[NotebookJob] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)       # {"folder", "job_id", "error"} each
    pending: list[dict] = field(default_factory=list)      # {"folder", "job_id"}: still queued or running
    submitted: int = 0


class ClusterExecutor:
    """Submits study jobs as one submitit job array and, unless told not to wait, watches them
    to the end.

    A job has ended when its record (`JOB_RECORD`) says done or failed, or when the queue no
    longer lists it (cancelled, out of time, killed: then it failed, and the tail of its
    submitit log says why). It finished only with its study's ``done.json``. Every submitted
    job is recorded in ``OUT/slurm/jobs.json`` with its id and log, so a later driver on the
    same folder waits for the ones still alive instead of submitting them again.
    """

    def __init__(self, cfg: ExecutorConfig, out: Path, progress: WorkbookProgress, notebooks_dir: Path):
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress
        self.notebooks_dir = notebooks_dir
        self.logs = self.out / "slurm" / "logs"
        self._own: dict[str, object] = {}       # job id -> submitit job, for jobs of this driver

    def check(self) -> None:
        """Raise WorkbookError now, before anything runs, when no job could be submitted."""
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise WorkbookError("--executor slurm needs the submitit package (pip install submitit)") from None
        if self.cfg.cluster == "slurm":
            missing = [tool for tool in ("sbatch", "squeue", "srun") if shutil.which(tool) is None]
            if missing:
                raise WorkbookError(
                    f"--executor slurm: {', '.join(missing)} not found on PATH, so this machine cannot "
                    f"submit to SLURM; run the workbook where sbatch works, or try the job path "
                    f"locally with --set executor.cluster=local")

    # -- the record of submitted jobs
    def tracked(self) -> dict[str, dict]:
        """``OUT/slurm/jobs.json``: the last job submitted for each study folder (relative to OUT)."""
        try:
            return json.loads((self.out / JOBS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def in_flight(self) -> dict[str, str]:
        """Study folders (relative to OUT) whose last job is still queued or running: its id."""
        tracked = self.tracked()
        live = self._alive(tracked)
        return {folder: entry["job_id"] for folder, entry in tracked.items() if entry["job_id"] in live}

    def _alive(self, tracked: dict[str, dict]) -> set[str]:
        ids = {entry["job_id"] for entry in tracked.values()}
        if not ids:
            return set()
        local = {entry["job_id"] for entry in tracked.values() if entry.get("cluster") == "local"}
        live = {i for i in local if self._local_alive(i)}
        if ids - local:
            live |= self._squeue(ids - local)
        return live

    def _local_alive(self, job_id: str) -> bool:
        job = self._own.get(job_id)
        if job is not None:                      # ours: ask the process (this also reaps it)
            return job._process is not None and job._process.poll() is None
        return _pid_alive(int(job_id)) if job_id.isdigit() else False

    def _squeue(self, ids: set[str]) -> set[str]:
        """The ids among `ids` that SLURM still lists as queued or running. A failing squeue
        counts them all as alive (a passing hiccup must not fail every job); a machine without
        squeue runs none of them."""
        if shutil.which("squeue") is None:       # no SLURM here: none of its jobs runs on this machine
            return set()
        try:
            result = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"],
                                    capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("squeue failed (%s); taking the jobs as still running", exc)
            return set(ids)
        if result.returncode != 0:
            log.warning("squeue failed (%s); taking the jobs as still running", result.stderr.strip())
            return set(ids)
        listed = dict(line.split("|", 1) for line in result.stdout.split() if "|" in line)
        return {i for i in ids if listed.get(i) in _LIVE_STATES}

    # -- submitting and watching
    def _executor(self):
        import submitit

        cfg = self.cfg
        self.logs.mkdir(parents=True, exist_ok=True)
        if cfg.cluster == "local":
            executor = submitit.LocalExecutor(folder=self.logs)
            executor.update_parameters(timeout_min=cfg.time_min, gpus_per_node=cfg.gpus_per_job,
                                       setup=list(cfg.setup))
            return executor
        executor = submitit.SlurmExecutor(folder=self.logs)
        params = {"job_name": "xtfclip-study", "time": cfg.time_min, "cpus_per_task": cfg.cpus_per_job,
                  "ntasks_per_node": 1, "setup": list(cfg.setup),
                  "additional_parameters": {str(k): v for k, v in cfg.sbatch.items()}}
        if cfg.gpus_per_job:
            params["gpus_per_node"] = cfg.gpus_per_job
        if cfg.partition:
            params["partition"] = cfg.partition
        if cfg.account:
            params["account"] = cfg.account
        if cfg.mem_gb:
            params["mem"] = f"{cfg.mem_gb}GB"
        if cfg.array_parallelism:
            params["array_parallelism"] = cfg.array_parallelism
        executor.update_parameters(**params)
        return executor

    def _submit(self, executor, jobs: list[NotebookJob]) -> dict[NotebookJob, str]:
        """Submit `jobs` (as one array on SLURM) and record them in jobs.json; their ids."""
        for job in jobs:                          # a record of an earlier attempt says nothing now
            (Path(job.params["run_dir"]) / JOB_RECORD).unlink(missing_ok=True)
        specs = [job_spec(job, self.notebooks_dir) for job in jobs]
        if self.cfg.cluster == "slurm" and len(jobs) > 1:
            with executor.batch():
                handles = [executor.submit(run_study_job, spec) for spec in specs]
        else:
            handles = [executor.submit(run_study_job, spec) for spec in specs]
        tracked = self.tracked()
        ids = {}
        for job, handle in zip(jobs, handles):
            self._own[handle.job_id] = handle
            ids[job] = handle.job_id
            tracked[self._folder(job)] = {"job_id": handle.job_id, "cluster": self.cfg.cluster,
                                          "stderr": str(handle.paths.stderr),
                                          "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(self.out / JOBS_FILE, json.dumps(tracked, indent=2))
        return ids

    def _folder(self, job: NotebookJob) -> str:
        return Path(job.params["run_dir"]).relative_to(self.out).as_posix()

    def run(self, jobs: list[NotebookJob], wait: bool = True) -> ClusterOutcome:
        """Submit the `jobs` not already queued or running, then (with `wait`) watch every one
        until it ends. Returns which finished, which failed (with their id and error) and, when
        not waiting, which are still pending."""
        outcome = ClusterOutcome()
        tracked = self.tracked()
        live = self._alive(tracked)
        flying = {job: tracked[self._folder(job)]["job_id"] for job in jobs
                  if tracked.get(self._folder(job), {}).get("job_id") in live}
        if flying:
            log.info("%d study jobs of an earlier workbook are still queued or running (%s): waiting "
                     "for them, not submitting them again", len(flying), _id_ranges(list(flying.values())))
        waiting = [job for job in jobs if job not in flying]
        executor = self._executor() if waiting else None
        # SLURM queues the whole array at once (executor.array_parallelism caps how many run);
        # submitit's local executor starts whatever it is given, so the driver meters it out.
        limit = (len(jobs) if self.cfg.cluster == "slurm" or not wait
                 else self.cfg.array_parallelism or os.cpu_count() or 1)
        started: set[NotebookJob] = set()
        gone: dict[NotebookJob, int] = {}
        while waiting or flying:
            room = max(0, limit - len(flying))
            batch, waiting = waiting[:room], waiting[room:]
            if batch:
                ids = self._submit(executor, batch)
                flying.update(ids)
                outcome.submitted += len(batch)
                log.info("submitted %d study jobs: %s", len(batch), _id_ranges(list(ids.values())))
            if not wait:
                outcome.pending = [{"folder": self._folder(job), "job_id": jid} for job, jid in flying.items()]
                return outcome
            time.sleep(self.cfg.poll_s)
            tracked = self.tracked()
            live = self._alive({self._folder(job): tracked[self._folder(job)] for job in flying})
            for job, jid in list(flying.items()):
                record = read_record(job.params["run_dir"])
                if record.get("state") == "running" and job not in started:
                    started.add(job)
                    self.progress.start(job)
                ended = record.get("state") in ("done", "failed")
                if not ended and jid not in live:     # gone from the queue without a final record:
                    gone[job] = gone.get(job, 0) + 1  # ended, once a second look (a shared file
                    ended = gone[job] >= 2            # system may show the record late) agrees
                if ended:
                    del flying[job]
                    self.progress.finish(job)
                    if record.get("state") == "done" and (Path(job.params["run_dir"]) / "done.json").is_file():
                        outcome.finished.append(job)
                    else:
                        outcome.failed.append({"folder": self._folder(job), "job_id": jid,
                                               "error": self._error_tail(job, record)})
        return outcome

    def _error_tail(self, job: NotebookJob, record: dict, lines: int = 5) -> str:
        """The last lines of a failed job's error: its traceback, else its submitit log."""
        if record.get("traceback"):
            return "\n".join(record["traceback"].strip().splitlines()[-lines:])
        stderr = self.tracked().get(self._folder(job), {}).get("stderr")
        text = ""
        if stderr and Path(stderr).is_file():
            text = Path(stderr).read_text(errors="replace").strip()
        what = ("it ended without finishing (cancelled, out of time or killed)" if record.get("state") == "running"
                else "it ended before it could start the notebook" if not record else "it ended without done.json")
        return what + (":\n" + "\n".join(text.splitlines()[-lines:]) if text else "; its log is empty")


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return state not in ("Z", "X")


def _id_ranges(ids: list[str]) -> str:
    """``["12_0", "12_1", "12_2"]`` -> ``"12_[0-2]"``; other ids as they are."""
    arrays: dict[str, list[int]] = {}
    plain = []
    for job_id in ids:
        head, _, task = job_id.partition("_")
        if task.isdigit():
            arrays.setdefault(head, []).append(int(task))
        else:
            plain.append(job_id)
    parts = [f"{head}_[{min(tasks)}-{max(tasks)}]" if len(tasks) > 1 else f"{head}_{tasks[0]}"
             for head, tasks in arrays.items()]
    return ", ".join(parts + plain)
