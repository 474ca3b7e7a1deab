"""The ablation report: every study's per-query results -> one table, plots and markdown/HTML.

Input: for each study, seed and case, the per-query arrays written by `workbook.evaluate_study`
(``ap``, ``inp`` and ``first_rank`` of every valid query). Every metric is a mean of per-query
values (R-k = share of queries whose first true match ranks <= k), which makes two things exact
and cheap: the "overall" row pools both cases' queries, and a bootstrap over queries resamples
one array.

Noise (METHOD §8): a difference between two studies is reported as exceeding the noise only if
it exceeds both (a) twice the seed-to-seed standard error, with the seed spread measured on the
baselines (which are always trained with several seeds), and (b) the 95 % paired bootstrap
interval over queries excludes zero. Anything else is "within noise" and is not ranked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

CASES = ("aerial_to_ground", "ground_to_aerial")
METRICS = ("R1", "R5", "R10", "mAP", "mINP")
RANKS = {"R1": 1, "R5": 5, "R10": 10}


def per_query_values(arrays: dict, metric: str) -> np.ndarray:
    """Per-query values whose mean is `metric` ((N,) float)."""
    if metric in RANKS:
        return (np.asarray(arrays["first_rank"]) <= RANKS[metric]).astype(float)
    if metric == "mAP":
        return np.asarray(arrays["ap"], dtype=float)
    if metric == "mINP":
        return np.asarray(arrays["inp"], dtype=float)
    raise KeyError(f"unknown metric {metric!r}; expected one of {METRICS}")


def with_overall(per_case: dict[str, dict]) -> dict[str, dict]:
    """Add the 'overall' case: both cases' queries pooled."""
    pooled = {key: np.concatenate([np.asarray(per_case[c][key]) for c in CASES if c in per_case])
              for key in ("ap", "inp", "first_rank")}
    return {**per_case, "overall": pooled}


def bootstrap_ci(values: np.ndarray, num_samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling queries)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(num_samples, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class StudyResult:
    """Per-query arrays of one study: results[seed][case] = {"ap", "inp", "first_rank"}."""
    name: str
    kind: str
    switch: str | None
    results: dict[int, dict[str, dict]]

    def seed_values(self, case: str, metric: str) -> np.ndarray:
        """(num_seeds,) metric of each seed."""
        return np.array([per_query_values(with_overall(r)[case], metric).mean()
                         for _, r in sorted(self.results.items())])

    def query_values(self, case: str, metric: str) -> np.ndarray:
        """(N,) per-query values averaged over seeds (the query set is the same for every seed)."""
        stacked = [per_query_values(with_overall(r)[case], metric) for _, r in sorted(self.results.items())]
        return np.mean(np.stack(stacked), axis=0)


def seed_spread(baselines: list[StudyResult], case: str, metric: str) -> float:
    """Pooled seed-to-seed standard deviation of `metric` over the studies with >= 2 seeds."""
    squares, dof = 0.0, 0
    for study in baselines:
        values = study.seed_values(case, metric)
        if values.size >= 2:
            squares += float(((values - values.mean()) ** 2).sum())
            dof += values.size - 1
    return math.sqrt(squares / dof) if dof else math.nan


def summarise(studies: list[StudyResult], reference_names: tuple[str, str] = ("tf_clip", "x_tfclip"),
              num_bootstrap: int = 1000) -> pd.DataFrame:
    """One row per study x case x metric: mean, std over seeds, bootstrap CI, deltas and verdicts."""
    by_name = {s.name: s for s in studies}
    missing = [n for n in reference_names if n not in by_name]
    if missing:
        raise KeyError(f"the report needs the reference studies {missing}; have {sorted(by_name)}")
    references = [by_name[n] for n in reference_names]
    rows = []
    for study in studies:
        for case in (*CASES, "overall"):
            for metric in METRICS:
                seeds = study.seed_values(case, metric)
                queries = study.query_values(case, metric)
                lo, hi = bootstrap_ci(queries, num_bootstrap)
                row = {"study": study.name, "kind": study.kind, "switch": study.switch or "",
                       "case": case, "metric": metric, "mean": float(seeds.mean()),
                       "std": float(seeds.std(ddof=1)) if seeds.size > 1 else math.nan,
                       "num_seeds": int(seeds.size), "ci_lo": lo, "ci_hi": hi,
                       "num_queries": int(queries.size)}
                sigma = seed_spread(references, case, metric)
                row["seed_spread"] = sigma
                for ref in references:
                    key = ref.name
                    ref_seeds = ref.seed_values(case, metric)
                    delta = float(seeds.mean() - ref_seeds.mean())
                    diff = queries - ref.query_values(case, metric)
                    d_lo, d_hi = bootstrap_ci(diff, num_bootstrap, seed=1)
                    noise = 2 * sigma * math.sqrt(1 / seeds.size + 1 / ref_seeds.size)
                    exceeds = (study.name != ref.name and not math.isnan(noise)
                               and abs(delta) > noise and (d_lo > 0 or d_hi < 0))
                    row[f"delta_vs_{key}"] = delta
                    row[f"delta_ci_lo_vs_{key}"] = d_lo
                    row[f"delta_ci_hi_vs_{key}"] = d_hi
                    row[f"noise_vs_{key}"] = noise
                    row[f"exceeds_noise_vs_{key}"] = bool(exceeds)
                rows.append(row)
    return pd.DataFrame(rows)


def headline_table(summary: pd.DataFrame, case: str = "overall") -> pd.DataFrame:
    """Wide table for one case: a row per study, 'mean ± std' of each metric in percent."""
    part = summary[summary.case == case]
    table = {}
    for (study, metric), row in part.set_index(["study", "metric"]).iterrows():
        std = "" if math.isnan(row["std"]) else f" ± {100 * row['std']:.1f}"
        table.setdefault(study, {})[metric] = f"{100 * row['mean']:.1f}{std}"
    order = list(dict.fromkeys(part.study))
    return pd.DataFrame.from_dict(table, orient="index").loc[order, list(METRICS)]


def delta_table(summary: pd.DataFrame, reference: str, metric: str = "mAP") -> pd.DataFrame:
    """A row per study and case: the difference in `metric` against `reference`, with its verdict."""
    part = summary[(summary.metric == metric) & (summary.study != reference)]
    out = part[["study", "case", f"delta_vs_{reference}", f"delta_ci_lo_vs_{reference}",
                f"delta_ci_hi_vs_{reference}", f"noise_vs_{reference}", f"exceeds_noise_vs_{reference}"]]
    out = out.rename(columns={f"delta_vs_{reference}": "delta", f"delta_ci_lo_vs_{reference}": "ci_lo",
                              f"delta_ci_hi_vs_{reference}": "ci_hi", f"noise_vs_{reference}": "noise",
                              f"exceeds_noise_vs_{reference}": "exceeds_noise"})
    return out.reset_index(drop=True)
