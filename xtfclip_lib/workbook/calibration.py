"""Calibration of the embedded default (METHOD §8): the baselines' numbers against its targets.

Read from a finished workbook's studies (``study_metrics.csv``, ``metrics.csv`` and
``platform_metrics.csv`` of each seed); `calibration_checks` states each target, its measured
value and whether it holds. Used by ``benchmarks/bench_calibration.py``, not by the report.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from xtfclip_lib.workbook.report import CASES

CALIBRATION_VARIANTS = ("x_tfclip", "tf_clip")


def _run_flip(run_dir: Path) -> bool:
    from xtfclip_lib.config import load_config_file
    return load_config_file(run_dir / "config.yaml").features.flip_tta


def calibration_table(out_dir: str | Path) -> pd.DataFrame:
    """The baselines' test metrics as METHOD §8 states its targets: one row per variant, model
    (``trained`` / ``untrained``), mask (True / False) and case, with R1 and mAP averaged over the
    finished seeds (each at the variant's own flip-TTA setting) and ``num_seeds``.

    Reads ``OUT/studies/<variant>/seed*/study_metrics.csv`` (written by `workbook.run_study`).
    """
    rows = []
    for variant in CALIBRATION_VARIANTS:
        seed_dirs = sorted(d for d in (Path(out_dir) / "studies" / variant).glob("seed*")
                           if (d / "done.json").is_file() and (d / "study_metrics.csv").is_file())
        if not seed_dirs:
            raise FileNotFoundError(f"calibration needs finished {variant} studies under "
                                    f"{Path(out_dir) / 'studies' / variant}")
        tables = []
        for seed_dir in seed_dirs:
            table = pd.read_csv(seed_dir / "study_metrics.csv")
            if "model" not in table:
                raise ValueError(f"{seed_dir / 'study_metrics.csv'} has no 'model' column: written by an "
                                 "older version; rerun the workbook into a fresh folder")
            tables.append(table[table.flip_tta == _run_flip(seed_dir)])
        both = pd.concat(tables)
        for (model, mask, case), group in both.groupby(["model", "soft_biometric_mask", "case"], sort=False):
            rows.append({"variant": variant, "model": model, "mask": bool(mask), "case": case,
                         "R1": float(group.R1.mean()), "mAP": float(group.mAP.mean()),
                         "num_seeds": int(len(group))})
    return pd.DataFrame(rows)


def _last_epoch_accuracy(out_dir: Path, variant: str, column: str = "acc_img") -> float:
    values = [float(pd.read_csv(d / "metrics.csv")[column].iloc[-1])
              for d in sorted((out_dir / "studies" / variant).glob("seed*")) if (d / "done.json").is_file()]
    return float(np.mean(values)) if values else math.nan


def _platform_r1(out_dir: Path, variant: str) -> dict[str, float]:
    tables = [pd.read_csv(d / "platform_metrics.csv").set_index("case").R1
              for d in sorted((out_dir / "studies" / variant).glob("seed*"))
              if (d / "platform_metrics.csv").is_file()]
    if not tables:
        return {"aerial_to_ground": math.nan, "ground_to_ground": math.nan}
    mean = pd.concat(tables, axis=1).mean(axis=1)
    return {"aerial_to_ground": float(mean["aerial_to_ground"]), "ground_to_ground": float(mean["ground_to_ground"])}


def calibration_checks(out_dir: str | Path, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each target of METHOD §8 with its measured value and whether it holds (``ok``).

    `summary` is `summarise`'s table (for query counts and the bootstrap half-width); without it
    those rows are left out. Values are fractions like every metric of the report (``unit``
    "fraction"), or counts (``unit`` "count").
    """
    out_dir = Path(out_dir)
    table = calibration_table(out_dir)

    def r1(variant: str, model: str, mask: bool, case: str) -> float:
        hit = table[(table.variant == variant) & (table.model == model) & (table["mask"] == mask)
                    & (table.case == case)]
        return float(hit.R1.iloc[0]) if len(hit) else math.nan

    checks = []

    def check(target: str, value: float, ok: bool, bound: str, unit: str = "fraction") -> None:
        checks.append({"target": target, "value": value, "unit": unit, "bound": bound, "ok": bool(ok)})

    for case in CASES:
        value = r1("x_tfclip", "trained", True, case)
        check(f"trained x_tfclip R1, {case}", value, 0.40 <= value <= 0.85, "40-85 %")
        before = r1("x_tfclip", "untrained", True, case)
        check(f"untrained x_tfclip R1, {case} (at most half of trained)", before,
              before <= 0.5 * value, f"<= {50 * value:.1f} %")
    for variant in CALIBRATION_VARIANTS:
        trained, untrained = r1(variant, "trained", False, "overall"), r1(variant, "untrained", False, "overall")
        check(f"{variant} without the mask, trained R1 overall", trained,
              trained >= 0.15 and trained >= 2 * untrained, f">= 15 % and >= 2 x untrained ({100 * untrained:.1f} %)")
    accuracy = _last_epoch_accuracy(out_dir, "tf_clip")
    check("tf_clip training ID accuracy (acc_img), last epoch", accuracy, accuracy >= 0.5, ">= 50 %")
    platform = _platform_r1(out_dir, "x_tfclip")
    gap = platform["ground_to_ground"] - platform["aerial_to_ground"]
    check("x_tfclip ground-to-ground minus aerial-to-ground R1 (no mask)", gap, gap >= 0.05, ">= 5 points")
    if summary is not None:
        rows = summary[(summary.study == "x_tfclip") & (summary.metric == "mAP")].set_index("case")
        for case in CASES:
            count = int(rows.loc[case, "num_queries"])
            check(f"queries, {case}", count, count >= 250, ">= 250", unit="count")
        half = float((rows.loc["overall", "ci_hi"] - rows.loc["overall", "ci_lo"]) / 2)
        check("x_tfclip overall mAP, 95 % bootstrap half-width", half, half <= 0.025, "<= 2.5 points")
        seeds = int(rows.loc["overall", "num_seeds"])
        check("seeds of each baseline", seeds, seeds >= 3, ">= 3", unit="count")
    return pd.DataFrame(checks)
