"""The `quick` workbook on a real one-node SLURM cluster (`benchmarks/slurm/start.sh`).

Marked slow (``make test-all`` or ``pytest -m slow``): it needs root on Debian, where start.sh
installs slurm-wlm and munge when they are missing, and takes a few minutes. The jobs are left
running (``--no-wait``), then a second call waits for them and writes the report without
submitting anything again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from xtfclip_lib.workbook.plan import plan_studies

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "benchmarks" / "slurm"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "XTFCLIP_SLURM_DIR": str(state)}
    started = subprocess.run(["bash", str(SLURM / "start.sh")], capture_output=True, text=True, env=env)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().rsplit("=", 1)[1]
    yield {**env, "SLURM_CONF": conf}
    subprocess.run(["bash", str(SLURM / "stop.sh")], env=env, check=False)


def _workbook(env, out, *extra):
    return subprocess.run([sys.executable, "-m", "xtfclip_lib", "workbook", "--preset", "quick", "--out", str(out),
                           "--executor", "slurm", "--executor-config", str(SLURM / "executor.yaml"), *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def test_the_quick_workbook_as_slurm_jobs_left_then_collected(cluster, tmp_path):
    out = tmp_path / "wb"
    first = _workbook(cluster, out, "--no-wait")
    assert first.returncode == 0, first.stderr[-2000:]
    tracked = json.loads((out / "slurm" / "jobs.json").read_text())
    arrays = {entry["job_id"].split("_")[0] for entry in tracked.values()}
    assert len(tracked) == 20 and len(arrays) == 1                  # one array of 20 study jobs
    assert f"submitted 20 study jobs: {arrays.pop()}_[0-19]" in first.stderr
    assert not (out / "report").exists()

    second = _workbook(cluster, out)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "submitted" not in second.stderr                         # it only waited and collected
    assert json.loads((out / "slurm" / "jobs.json").read_text()) == tracked
    for folder, entry in tracked.items():
        record = json.loads((out / folder / "job.json").read_text())
        assert record["state"] == "done" and record["job_id"] == entry["job_id"]
    table = pd.read_csv(out / "report" / "ablation.csv")
    assert sorted(table.study.unique()) == sorted(s.name for s in plan_studies())
