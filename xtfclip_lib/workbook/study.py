"""One study of the ablation: train a model (or re-use it) and score it for the report.

`run_study` is what notebook 03 calls for each trained model and seed; `evaluate_study` writes
the per-query arrays the report reads (`report.read_per_query`) and the per-case tables the
calibration reads (``study_metrics.csv``); `platform_table` the aerial-against-ground check.
A study is marked done only once all of it is written (`provenance.study_key`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xtfclip_lib.utils import atomic_write_text
from xtfclip_lib.workbook.plan import test_time_settings
from xtfclip_lib.workbook.provenance import StaleStudyError, study_key, study_state
from xtfclip_lib.workbook.report import setting_name


def evaluate_study(run_dir: str | Path, settings: list[dict]) -> pd.DataFrame:
    """Score a trained run under each test-time setting; keep per-query arrays for the report.

    Writes ``run_dir/per_query/<setting>.npz`` (per case: ``ap``, ``inp``, ``first_rank`` of the
    valid queries) and returns the per-case table of every setting (``model`` = "trained"), plus
    the untrained model's tables with and without the mask (``model`` = "untrained") when the run
    kept its features. Features are extracted once per flip value (and cached in the run folder);
    the mask only changes the distance matrix.
    """
    from xtfclip_lib import evaluation
    from xtfclip_lib.config import load_config_file
    from xtfclip_lib.engine import (FEATURES_DIR, UNTRAINED, case_distmats, load_features, run_features,
                                    score_cases, untrained_key)

    run_dir = Path(run_dir)
    folder = run_dir / "per_query"
    folder.mkdir(exist_ok=True)
    tables = []
    for flip in sorted({s["flip_tta"] for s in settings}):
        run = run_features(run_dir, flip_tta=flip)
        for setting in (s for s in settings if s["flip_tta"] == flip):
            distmats = case_distmats(run.sets, run.lists, run.cases, run.cfg,
                                     mask=setting["soft_biometric_mask"], rerank=False)
            arrays, per_case = {}, {}
            for case in run.cases:
                q, g = run.sets[case.query], run.sets[case.gallery]
                result = evaluation.evaluate(distmats[case.name], q.pids, g.pids, q.camids, g.camids,
                                             max_rank=run.cfg.eval.max_rank, per_query=True)
                valid = result["valid"]
                kept = {key: np.asarray(result[key])[valid] for key in ("ap", "inp", "first_rank")}
                arrays.update({f"{case.name}__{key}": values for key, values in kept.items()})
                per_case[case.name] = (kept["first_rank"], kept["ap"], kept["inp"])
            np.savez(folder / f"{setting_name(setting)}.npz", **arrays)
            table = evaluation.summary_table(per_case)      # the metrics above, not computed again
            tables.append(table.assign(model="trained", soft_biometric_mask=setting["soft_biometric_mask"],
                                       flip_tta=flip))
    # The untrained model (same seed, pretrained backbone, fresh heads), with and without the mask,
    # at the run's own flip setting: the "before" of METHOD §8's calibration.
    own = load_config_file(run_dir / "config.yaml")     # as trained: `run.cfg` has the last flip above
    untrained = load_features(run_dir / FEATURES_DIR, UNTRAINED, untrained_key(own, run.lists))
    if untrained is not None:
        for mask in sorted({s["soft_biometric_mask"] for s in settings}):
            table = score_cases(untrained, run.lists, run.cases, own, mask=mask, rerank=False)
            tables.append(table.assign(model="untrained", soft_biometric_mask=mask,
                                       flip_tta=own.features.flip_tta))
    return pd.concat(tables, ignore_index=True)


def platform_table(run_dir: str | Path) -> pd.DataFrame:
    """Aerial-to-ground against ground-to-ground retrieval of the same test identities in the
    same ground gallery (`inference.platform_cases`), without the mask: how much of the task is
    the change of platform (METHOD §8). Uses the run's cached test features."""
    from xtfclip_lib.engine import platform_cases, run_features, score_cases

    run = run_features(run_dir)
    return score_cases(run.sets, run.lists, platform_cases(run.cases), run.cfg, mask=False, rerank=False)


def torchrun_command(preset: str, variant: str, overrides: list[str], run_dir: Path, processes: int, *,
                     resume: bool) -> list[str]:
    """The ``torchrun`` command line that trains one study with `processes` processes on this node."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "xtfclip_lib", "train", "--preset", preset, "--variant", variant, "--out", str(run_dir)]
    command += [part for override in overrides for part in ("--set", override)]
    return command + (["--resume"] if resume else [])


def run_study(preset: str, variant: str, run_name: str, seed: int, run_dir: str | Path, *,
              overrides: list[str] = (), train_overrides: list[str] = (), processes: int = 1) -> pd.DataFrame:
    """Train one model of the ablation (or resume / re-use it) and evaluate it for its studies.

    The study is marked done (``done.json``, holding its `study_key`) only after everything was
    written, so a workbook interrupted anywhere in here redoes exactly this study. A folder made
    with another config, data set or backbone (`study_state` "stale") is an error naming what
    differs: its model must not be evaluated under this study's name (the workbook removes such
    folders before it runs this notebook).

    With `processes` > 1 the model trains data-parallel under ``torchrun`` (one process per GPU
    the job sees, `engine.distributed`), the way a study on a multi-GPU SLURM job runs; scoring
    stays in this process.
    """
    from xtfclip_lib.config import load_config
    from xtfclip_lib.engine import train

    run_dir = Path(run_dir)
    every_override = [*overrides, *train_overrides, f"train.seed={seed}"]
    cfg = load_config(preset, variant, every_override)
    key = study_key(cfg)
    state, differences = study_state(run_dir, cfg, key)
    if state == "stale":
        raise StaleStudyError(f"{run_dir} was made with other settings ({'; '.join(differences)}); "
                              f"delete it or choose another folder")
    if not (run_dir / "summary.json").is_file():
        resume = (run_dir / "last.pt").is_file()
        if processes > 1:
            command = torchrun_command(preset, variant, every_override, run_dir, processes, resume=resume)
            code = subprocess.run(command).returncode
            if code != 0:
                raise RuntimeError(f"training {run_dir} with torchrun ({processes} processes) failed with "
                                   f"exit code {code}; its log is {run_dir / 'train.log'}")
        else:
            train(cfg, run_dir, resume=resume)
    threads = torch.get_num_threads()
    if cfg.train.num_threads > 0:        # evaluate with the threads it trained with: same numbers anywhere
        torch.set_num_threads(cfg.train.num_threads)
    try:
        table = evaluate_study(run_dir, test_time_settings(run_name))
    finally:
        torch.set_num_threads(threads)
    table.to_csv(run_dir / "study_metrics.csv", index=False)
    platform_table(run_dir).to_csv(run_dir / "platform_metrics.csv", index=False)
    atomic_write_text(run_dir / "done.json", json.dumps(
        {"run_name": run_name, "variant": variant, "seed": seed, "preset": preset,
         "overrides": list(overrides), "train_overrides": list(train_overrides), "key": key}, indent=2))
    return table
