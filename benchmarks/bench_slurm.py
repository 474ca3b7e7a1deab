"""The `quick` workbook through a real one-node SLURM cluster: submit-to-report time, and the
same report as the local executor's.

Usage: ``python benchmarks/bench_slurm.py`` (root, Debian: start.sh installs slurm-wlm and munge
when missing). Starts the cluster of ``benchmarks/slurm/start.sh`` unless ``SLURM_CONF`` already
names a working one, runs ``workbook --preset quick --executor slurm`` with
``benchmarks/slurm/executor.yaml`` and then the same workbook with the local executor, each into
a folder of its own, compares their ``report/ablation.csv`` and stops the cluster it started.
Writes results/benchmarks/slurm.json: the cluster's start time, the job count, submit-to-report
time (the SLURM jobs' stage and the closing notebooks), both workbooks' stage times and whether
the reports are identical. Exits 1 when they are not; exits 0 saying why when no cluster can run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import write_result  # noqa: E402


def _cluster_up() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() in ("idle", "mixed", "allocated")


def _workbook(out: Path, *extra: str) -> tuple[float, dict]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xtfclip_lib", "--quiet", "workbook", "--preset", "quick",
                    "--out", str(out), *extra], check=True, cwd=ROOT)
    return round(time.perf_counter() - start, 1), json.loads((out / "workbook.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="keep both workbooks in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    started_here, start_s = False, 0.0
    if "SLURM_CONF" not in os.environ or not _cluster_up():
        begin = time.perf_counter()
        result = subprocess.run(["bash", str(HERE / "slurm" / "start.sh")], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"bench_slurm: skipped, no SLURM cluster could be started here: {result.stderr.strip()}")
            return 0
        os.environ["SLURM_CONF"] = result.stdout.strip().rsplit("=", 1)[1]
        started_here, start_s = True, round(time.perf_counter() - begin, 1)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    try:
        slurm_s, slurm = _workbook(folder / "slurm", "--executor", "slurm",
                                   "--executor-config", str(HERE / "slurm" / "executor.yaml"))
        local_s, local = _workbook(folder / "local")
        same = (folder / "slurm" / "report" / "ablation.csv").read_bytes() == \
            (folder / "local" / "report" / "ablation.csv").read_bytes()
        jobs = json.loads((folder / "slurm" / "slurm" / "jobs.json").read_text())
    finally:
        if started_here:
            subprocess.run(["bash", str(HERE / "slurm" / "stop.sh")], check=False)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    stages = slurm["stages"]
    trained = next(v for k, v in stages.items() if k.startswith("trained models"))
    closing = sum(stages[k] for k in ("04_training", "05_retrieval_visualisation", "06_ablation_report"))
    path = write_result("slurm", {
        "cluster_start_s": start_s, "cluster_started_here": started_here, "jobs": len(jobs),
        "job_ids": sorted(entry["job_id"] for entry in jobs.values()),
        "submit_to_report_s": round(trained + closing, 1), "slurm_workbook_s": slurm_s,
        "local_workbook_s": local_s, "slurm_stages": stages, "local_stages": local["stages"],
        "same_report": same})
    print(f"bench_slurm: {len(jobs)} jobs, submit to report {trained + closing:.1f} s "
          f"(whole workbook {slurm_s} s on SLURM, {local_s} s local); reports identical: {same}; {path}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
