"""Data-parallel training: torchrun with 2 gloo processes on CPU (issue 5), and the helpers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from xtfclip_lib.engine import loop as engine
from xtfclip_lib.config import load_config
from xtfclip_lib.engine.distributed import (DistEnv, all_gather_rows, is_main_process, resolve_device,
                                     setup_distributed)

REPO = Path(__file__).resolve().parent.parent


def test_single_process_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = setup_distributed("cpu")
    assert env == DistEnv() and env.is_main and not env.is_distributed and is_main_process()
    rows = torch.arange(8.0).reshape(4, 2)
    ordered = all_gather_rows(rows, torch.tensor([2, 0, 3, 1]), total=4)
    torch.testing.assert_close(ordered, rows[[1, 3, 0, 2]])
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="train.device='gpu'"):
        resolve_device("gpu")


def test_torchrun_two_gloo_processes(quick_root, tmp_path):
    overrides = [f"data.root={quick_root}", "train.num_threads=1"]
    single = engine.train(load_config("quick", "x_tfclip", overrides), tmp_path / "single")

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "xtfclip_lib", "--quiet", "train", "--preset", "quick", "--out", str(out),
               *(arg for o in overrides for arg in ("--set", o))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    ddp_table, single_table = pd.read_csv(out / "test_metrics.csv"), pd.read_csv(tmp_path / "single" / "test_metrics.csv")
    assert list(ddp_table.columns) == list(single_table.columns)
    assert list(ddp_table["case"]) == list(single_table["case"])
    assert ddp_table.drop(columns=["case", "selected_on"]).map(lambda v: 0 <= v).all().all()
    assert summary.keys() == single.keys() and summary["selected_on"] == "val"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    single_rows = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0].keys() == single_rows[0].keys()
    # each rank takes a disjoint half of the epoch's batches
    assert rows[0]["steps"] == single_rows[0]["steps"] // 2
    assert not list(out.glob("*.tmp")) and (out / "best.pt").is_file()
