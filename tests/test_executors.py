"""Where the trained models run: the plan as jobs, GPUs of one machine, submitit jobs that can be
left and collected later, failed jobs re-submitted alone, one driver per results folder.

The notebooks here are small stand-ins executed for real by papermill (in the driver, or in the
processes of submitit's local executor): the study notebook writes what a finished study leaves
(its config and ``done.json`` with the real `study_key`) in seconds, so every rule of the
executors runs as it does on a cluster.
"""
from __future__ import annotations

import json
import os
import stat
import threading

import nbformat
import pytest

from xtfclip_lib.config import load_config
from xtfclip_lib.utils import LockedError, exclusive_lock
from xtfclip_lib.workbook import ExecutorConfig, load_executor_config
from xtfclip_lib.workbook.cluster import JOBS_FILE, ClusterExecutor, _id_ranges
from xtfclip_lib.workbook.executors import JOB_RECORD, LocalExecutor, device_groups, read_record
from xtfclip_lib.workbook.notebooks import WorkbookError
from xtfclip_lib.workbook.plan import plan_studies, plan_training_runs
from xtfclip_lib.workbook.progress import NotebookJob, WorkbookProgress
from xtfclip_lib.workbook.runner import LOCK_FILE, _plan_jobs, run_workbook

STUDY_CELL = """
import json, os, time
from pathlib import Path
from xtfclip_lib.config import load_config, save_config
from xtfclip_lib.workbook.provenance import study_key

folder = Path(run_dir)
folder.mkdir(parents=True, exist_ok=True)
(folder / "seen.json").write_text(json.dumps({"devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                              "start": time.time()}))
hold = Path(out_dir) / "hold"
while hold.exists():                       # the test holds the jobs here while it looks at them
    time.sleep(0.2)
if (Path(out_dir) / f"fail_{run_name}").exists():
    raise RuntimeError(f"{run_name} broken on purpose")
time.sleep(0.5)
cfg = load_config(preset, variant, [*overrides, *train_overrides, f"train.seed={seed}"])
save_config(cfg, folder / "config.yaml")
(folder / "done.json").write_text(json.dumps({"run_name": run_name, "key": study_key(cfg)}))
seen = json.loads((folder / "seen.json").read_text())
(folder / "seen.json").write_text(json.dumps({**seen, "end": time.time()}))
"""


def _write_notebook(path, source, parameters):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def stand_ins(tmp_path):
    """Stand-in notebooks 01-06: 03 as described above, 06 writes the report, the others nothing."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    common = 'preset = "quick"\noverrides = []\nout_dir = "."\nrun_dir = "."\n'
    for name in ("01_data_exploration", "02_backbone_pretraining", "04_training", "05_retrieval_visualisation"):
        _write_notebook(folder / f"{name}.ipynb", "x = 1", common)
    _write_notebook(folder / "03_ablations.ipynb", STUDY_CELL,
                    common + 'run_name = "x"\nvariant = "x_tfclip"\ntrain_overrides = []\nseed = 0\nprocesses = 1\n')
    _write_notebook(folder / "06_ablation_report.ipynb",
                    "from pathlib import Path\n(Path(out_dir) / 'report').mkdir(exist_ok=True)\n"
                    "(Path(out_dir) / 'report' / 'ablation.md').write_text('report')",
                    common + 'studies_dir = "."\n')
    return folder


def _fake_dataset(root):
    """The AG-VPReID layout with a few (unreadable) frames: enough for the data manifest."""
    for split, pid in (("train", 1), ("case1_aerial_to_ground/query", 2), ("case1_aerial_to_ground/gallery", 2),
                       ("case2_ground_to_aerial/query", 3), ("case2_ground_to_aerial/gallery", 3)):
        folder = root / split / f"{pid:04d}" / f"{pid:04d}_C0_T001"
        folder.mkdir(parents=True)
        (folder / f"{pid:04d}_C0_T001_F0000.jpg").write_bytes(b"x")
    (root / "attributes").mkdir()
    (root / "attributes" / "train.csv").write_text("id\n1\n")
    return root


def _workbook(tmp_path, notebooks, **kwargs):
    root = tmp_path / "data"
    if not root.exists():
        _fake_dataset(root)
    kwargs.setdefault("executor", ExecutorConfig(kind="slurm", cluster="local", gpus_per_job=0, poll_s=0.2))
    return run_workbook("quick", seeds=1, spread_seeds=1, out=tmp_path / "wb", studies=plan_studies()[:3],
                        overrides=(f"data.root={root}",), notebooks_dir=notebooks, **kwargs)


# --------------------------------------------------------------------------------------------
# configuration and the plan

def test_executor_config_reads_yaml_then_overrides_and_names_bad_settings(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("kind: slurm\npartition: gpu\ngpus_per_job: 2\nsbatch: {qos: high}\nsetup: [module load cuda]\n")
    cfg = load_executor_config(path, ["executor.time_min=90", "executor.partition=a100"])
    assert (cfg.kind, cfg.partition, cfg.gpus_per_job, cfg.time_min) == ("slurm", "a100", 2, 90)
    assert cfg.sbatch == {"qos": "high"} and cfg.setup == ("module load cuda",)
    assert load_executor_config(None, [], kind="local", gpus="0,1").gpus == "0,1"
    with pytest.raises(KeyError, match="'partiton'"):
        load_executor_config(None, ["executor.partiton=gpu"])
    with pytest.raises(TypeError, match="'gpus_per_job' expects int"):
        load_executor_config(None, ["executor.gpus_per_job=two"])
    with pytest.raises(ValueError, match="executor.kind='pbs'"):
        load_executor_config(None, ["executor.kind=pbs"])
    with pytest.raises(ValueError, match="--executor local"):
        load_executor_config(None, [], kind="slurm", gpus="0,1")
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_executor_config(tmp_path / "nothere.yaml")


def test_device_groups_split_the_gpus_or_name_the_problem():
    assert device_groups("0,1,2,3", 1) == ["0", "1", "2", "3"]
    assert device_groups("0,1,2,3", 2) == ["0,1", "2,3"]
    for bad, match in (("0,1,2", "groups of"), ("0,0", "twice"), ("a,b", "device numbers")):
        with pytest.raises(ValueError, match=match):
            device_groups(bad, 2)


def test_every_trained_model_is_one_job_writing_only_into_its_study_folder(tmp_path):
    runs = plan_training_runs(plan_studies())
    slurm = ExecutorConfig(kind="slurm", gpus_per_job=2, cpus_per_job=6)
    plan = _plan_jobs("paper", 1, tmp_path, runs, spread_seeds=3, overrides=(), jobs=1, executor=slurm)
    expected = sum(3 if run.name in ("tf_clip", "x_tfclip") else 1 for run in runs)
    assert len(plan.ablations) == expected
    folders = [job.params["run_dir"] for job in plan.ablations]
    assert len(set(folders)) == len(folders)                       # no two jobs share a folder
    for job in plan.ablations:
        assert job.output.parent == tmp_path / "studies" / job.params["run_name"] / f"seed{job.params['seed']}"
        assert str(job.output.parent) == job.params["run_dir"]
        assert job.params["processes"] == 2                       # torchrun over the job's two GPUs
        assert "train.num_threads=6" in job.params["overrides"]   # paper leaves threads to the machine
    assert {job.key for job in plan.ablations} == {f"03_ablations__{j.params['run_name']}__seed{j.params['seed']}"
                                                   for j in plan.ablations}
    # tiny fixes one thread per study: no executor changes what it computes
    tiny = _plan_jobs("tiny", 1, tmp_path, runs[:2], spread_seeds=1, overrides=(), jobs=2, executor=slurm)
    local = _plan_jobs("tiny", 1, tmp_path, runs[:2], spread_seeds=1, overrides=(), jobs=2)
    assert [j.params["overrides"] for j in tiny.ablations] == [j.params["overrides"] for j in local.ablations] == [[], []]
    assert [j.params["processes"] for j in local.ablations] == [1, 1]


# --------------------------------------------------------------------------------------------
# local: GPUs of one machine

def test_local_studies_each_see_only_their_devices(tmp_path, stand_ins):
    out = tmp_path / "wb"
    jobs = [NotebookJob("03_ablations", out / f"s{i}" / "03_ablations.ipynb",
                        {"preset": "quick", "overrides": [f"data.root={tmp_path}"], "out_dir": str(out),
                         "run_name": f"s{i}", "variant": "x_tfclip", "train_overrides": [], "seed": 0,
                         "run_dir": str(out / f"s{i}"), "processes": 1}) for i in range(4)]
    progress = WorkbookProgress(jobs, stand_ins, bar=_quiet_bar())
    LocalExecutor(progress, stand_ins, device_groups("0,1,2,3", 2)).run_studies(jobs, workers=1)
    seen = [json.loads((out / f"s{i}" / "seen.json").read_text()) for i in range(4)]
    assert {s["devices"] for s in seen} <= {"0,1", "2,3"}
    assert [read_record(out / f"s{i}")["devices"] for i in range(4)] == [s["devices"] for s in seen]
    for a in seen:                      # two studies running at the same time never share a device
        for b in seen:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["devices"] != b["devices"]
    assert sum(a["start"] < b["end"] and b["start"] < a["end"] for a in seen for b in seen if a is not b) > 0


def _quiet_bar():
    import io

    from tqdm import tqdm
    return tqdm(total=0, file=io.StringIO())


# --------------------------------------------------------------------------------------------
# slurm, through submitit's local executor (the same jobs, no queue)

def test_no_wait_submits_then_a_second_call_waits_and_only_collects(tmp_path, stand_ins, monkeypatch):
    (tmp_path / "wb").mkdir()
    (tmp_path / "wb" / "hold").write_text("")           # the jobs wait until the test lets them go
    first = _workbook(tmp_path, stand_ins, wait=False)
    assert first["report"] is None and len(first["pending"]) == 3
    tracked = json.loads((tmp_path / "wb" / JOBS_FILE).read_text())
    assert sorted(tracked) == ["studies/loo_bicubic_pos_embed/seed0", "studies/tf_clip/seed0",
                               "studies/x_tfclip/seed0"]
    assert {p["job_id"] for p in first["pending"]} == {e["job_id"] for e in tracked.values()}
    assert not (tmp_path / "wb" / "report").exists() and not (tmp_path / "wb" / LOCK_FILE).exists()

    submitted = []
    original = ClusterExecutor._submit
    monkeypatch.setattr(ClusterExecutor, "_submit",
                        lambda self, executor, jobs: submitted.append(len(jobs)) or original(self, executor, jobs))
    threading.Timer(2.0, (tmp_path / "wb" / "hold").unlink).start()   # release them while the driver waits
    second = _workbook(tmp_path, stand_ins)
    assert submitted == []                                  # it waited for the running jobs
    assert second["report"] and (tmp_path / "wb" / "report" / "ablation.md").read_text() == "report"
    for folder in tracked:
        assert read_record(tmp_path / "wb" / folder)["state"] == "done"
        assert (tmp_path / "wb" / folder / "03_ablations.ipynb").is_file()

    third = _workbook(tmp_path, stand_ins, wait=False)      # all done: collecting needs no job at all
    assert submitted == [] and third["skipped_done"] == 3 and third["report"]


def test_a_failed_job_is_named_then_resubmitted_alone(tmp_path, stand_ins, monkeypatch):
    (tmp_path / "wb").mkdir()
    (tmp_path / "wb" / "fail_tf_clip").write_text("")
    with pytest.raises(WorkbookError) as failure:
        _workbook(tmp_path, stand_ins)
    message = str(failure.value)
    job_id = json.loads((tmp_path / "wb" / JOBS_FILE).read_text())["studies/tf_clip/seed0"]["job_id"]
    assert message.startswith("1 of 3 study jobs failed")
    assert f"studies/tf_clip/seed0 (job {job_id})" in message and "tf_clip broken on purpose" in message
    folder = tmp_path / "wb" / "studies" / "tf_clip" / "seed0"
    assert read_record(folder)["state"] == "failed" and "broken on purpose" in (folder / "job.log").read_text()
    assert (folder / "03_ablations.ipynb").is_file() and not (folder / "done.json").exists()
    assert not (tmp_path / "wb" / "report").exists()

    (tmp_path / "wb" / "fail_tf_clip").unlink()
    submitted = []
    original = ClusterExecutor._submit
    monkeypatch.setattr(ClusterExecutor, "_submit", lambda self, executor, jobs: submitted.append(
        [j.params["run_name"] for j in jobs]) or original(self, executor, jobs))
    again = _workbook(tmp_path, stand_ins)
    assert submitted == [["tf_clip"]] and again["skipped_done"] == 2 and again["report"]
    assert read_record(folder)["state"] == "done"


def test_a_job_gone_from_the_queue_without_a_record_is_a_failure_with_its_log(tmp_path, stand_ins):
    """What a cancelled or timed-out SLURM job looks like: the queue forgets it, nothing finished."""
    cluster = ClusterExecutor(ExecutorConfig(kind="slurm", cluster="local", poll_s=0.05), tmp_path,
                              WorkbookProgress([], stand_ins, bar=_quiet_bar()), stand_ins)
    folder = tmp_path / "studies" / "tf_clip" / "seed0"
    folder.mkdir(parents=True)
    (folder / JOB_RECORD).write_text(json.dumps({"job_id": "99999999", "state": "running"}))
    log = tmp_path / "99999999_0_log.err"
    log.write_text("slurmstepd: error: *** JOB 99999999 CANCELLED ***\n")
    (tmp_path / JOBS_FILE).parent.mkdir(parents=True)
    (tmp_path / JOBS_FILE).write_text(json.dumps({"studies/tf_clip/seed0": {
        "job_id": "99999999", "cluster": "local", "stderr": str(log)}}))
    job = NotebookJob("03_ablations", folder / "03_ablations.ipynb", {"run_dir": str(folder)})
    answers = iter([{"99999999"}])                      # listed when the driver starts, then gone
    cluster._alive = lambda tracked: next(answers, set())
    outcome = cluster.run([job])
    assert outcome.submitted == 0 and [f["folder"] for f in outcome.failed] == ["studies/tf_clip/seed0"]
    assert "ended without finishing" in outcome.failed[0]["error"] and "CANCELLED" in outcome.failed[0]["error"]


def test_squeue_is_read_for_array_tasks_and_a_failing_squeue_fails_nothing(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\nprintf '12_0|RUNNING\\n12_1|PENDING\\n12_2|COMPLETING\\n13|CANCELLED\\n'\n")
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cluster = ClusterExecutor(ExecutorConfig(kind="slurm"), tmp_path, None, tmp_path)
    assert cluster._squeue({"12_0", "12_1", "12_2", "12_3", "13"}) == {"12_0", "12_1", "12_2"}
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out' >&2\nexit 1\n")
    assert cluster._squeue({"12_0", "12_3"}) == {"12_0", "12_3"}
    assert _id_ranges(["12_0", "12_1", "12_2", "14"]) == "12_[0-2], 14"


def test_slurm_executor_without_a_cluster_is_refused_before_anything_runs(tmp_path, stand_ins, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))                    # no sbatch here
    with pytest.raises(WorkbookError, match="sbatch, squeue, srun not found on PATH"):
        _workbook(tmp_path, stand_ins, executor=ExecutorConfig(kind="slurm"))
    for tool in ("sbatch", "srun", "squeue"):                   # SLURM's tools, but no controller
        (bin_dir / tool).write_text("#!/bin/sh\necho 'fatal: Could not establish a configuration source' >&2\n"
                                    "exit 1\n")
        (bin_dir / tool).chmod(0o755)
    with pytest.raises(WorkbookError, match=r"squeue cannot reach a SLURM controller \(fatal: Could not"):
        _workbook(tmp_path, stand_ins, executor=ExecutorConfig(kind="slurm"))
    assert not (tmp_path / "wb").exists()                       # nothing ran, nothing was written


def test_two_drivers_on_one_results_folder_are_refused(tmp_path, stand_ins):
    out = tmp_path / "wb"
    with exclusive_lock(out / LOCK_FILE, "test"):
        with pytest.raises(LockedError, match=rf"held by pid {os.getpid()} on .*: another workbook is driving"):
            _workbook(tmp_path, stand_ins)
    assert not (out / LOCK_FILE).exists()
    # a lock left by a killed driver of this machine is taken over
    (out / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": 2 ** 22 + 12345}))
    with exclusive_lock(out / LOCK_FILE, "test") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_study_on_several_devices_trains_with_torchrun(quick_root, tmp_path, monkeypatch):
    """``processes`` > 1 (a job with executor.gpus_per_job > 1): the model trains data-parallel
    (here 2 gloo processes on CPU), then is scored and marked done like any study."""
    from xtfclip_lib.workbook import run_study

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = tmp_path / "studies" / "x_tfclip" / "seed0"
    overrides = [f"data.root={quick_root}", "train.num_threads=1"]
    table = run_study("quick", "x_tfclip", "x_tfclip", 0, run_dir, overrides=overrides, processes=2)
    single = load_config("quick", "x_tfclip", [*overrides, "train.seed=0"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == single.train.epochs and "2 training processes" in (run_dir / "train.log").read_text()
    assert (run_dir / "done.json").is_file() and set(table.model) == {"trained", "untrained"}
