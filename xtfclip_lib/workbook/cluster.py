"""The ``slurm`` executor: the study jobs as one submitit job array, watched to the end.

`ClusterExecutor` submits the study jobs (`executors.run_study_job`) through submitit: to SLURM
with an `ExecutorConfig`'s partition, account, GPUs and CPUs per job, memory, time limit, array
parallelism, extra ``sbatch`` flags and setup lines, or (``cluster: local``) to submitit's local
executor, the same jobs as processes of this machine. It watches them through ``squeue`` and
the jobs' own records, never ``sacct``, so clusters without accounting work too and a cancelled
or timed-out job is seen as ended. ``OUT/slurm/jobs.json`` lists every submitted job, so a later
driver waits for those still queued or running and re-submits only failed or missing ones.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from xtfclip_lib.utils import atomic_write_text, pid_alive
from xtfclip_lib.workbook.executors import JOB_RECORD, ExecutorConfig, job_spec, read_record, run_study_job
from xtfclip_lib.workbook.notebooks import WorkbookError
from xtfclip_lib.workbook.progress import NotebookJob, WorkbookProgress

log = logging.getLogger(__name__)

__all__ = ["ClusterExecutor", "ClusterOutcome", "JOBS_FILE"]

JOBS_FILE = Path("slurm") / "jobs.json"   # under OUT: the last job submitted for each study folder
_LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
                "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}


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
            probe = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i"],
                                   capture_output=True, text=True, timeout=120)
            if probe.returncode != 0:
                why = (probe.stderr.strip().splitlines() or ["no message"])[-1]
                raise WorkbookError(f"--executor slurm: squeue cannot reach a SLURM controller ({why}); "
                                    f"is SLURM_CONF set and slurmctld up?")

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
        return pid_alive(int(job_id)) if job_id.isdigit() else False

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
        as_array = self.cfg.cluster == "slurm" and len(jobs) > 1     # one sbatch: all or nothing
        try:
            if as_array:
                with executor.batch():
                    handles = [executor.submit(run_study_job, spec) for spec in specs]
            else:
                handles = [executor.submit(run_study_job, spec) for spec in specs]
        except Exception as exc:            # sbatch refused (partition, account, limits...): say what it said
            text = str(exc).strip().splitlines()
            raise WorkbookError(f"submitting {len(jobs)} study jobs failed: {text[-1] if text else exc!r}"
                                f"{'; nothing was submitted' if as_array else ''} (the executor settings "
                                f"come from --executor-config and --set executor.*)") from None
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
