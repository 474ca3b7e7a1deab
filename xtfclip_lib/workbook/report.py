"""The ablation report: every study's per-query results -> one table, plots and markdown/HTML.

Input: for each study, seed and case, the per-query arrays written by `study.evaluate_study`
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

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xtfclip_lib.evaluation import CMC_RANKS, METRIC_NAMES
from xtfclip_lib.utils import atomic_write_text

CASES = ("aerial_to_ground", "ground_to_aerial")
METRICS = tuple(m for m in METRIC_NAMES if m != "R20")     # the evaluation's metrics less R20
RANKS = {f"R{k}": k for k in CMC_RANKS if f"R{k}" in METRICS}


def setting_name(test_time: dict) -> str:
    """File stem of one test-time setting, e.g. ``mask1_flip0``."""
    return f"mask{int(test_time['soft_biometric_mask'])}_flip{int(test_time['flip_tta'])}"


def read_per_query(path: str | Path) -> dict[str, dict]:
    """The per-case arrays written by `study.evaluate_study` (``<case>__<key>`` in an .npz)."""
    per_case: dict[str, dict] = {}
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            case, key = name.rsplit("__", 1)
            per_case.setdefault(case, {})[key] = data[name]
    return per_case


def collect_studies(out_dir: str | Path, studies) -> list[StudyResult]:
    """Read every study's per-query results under ``out_dir/studies/`` (any number of seeds).

    `studies` is `workbook.plan_studies()` (or a part of it). A study none of whose seeds has
    results raises FileNotFoundError naming the folder, so a report never silently drops a row;
    studies trained with settings that differ in more than their ablated switch raise
    ValueError (`check_same_settings`), so a report never mixes them.
    """
    results = []
    for study in studies:
        folder = Path(out_dir) / "studies" / study.run.name
        seeds = {}
        for seed_dir in finished_seeds(folder):
            path = seed_dir / "per_query" / f"{setting_name(study.test_time)}.npz"
            if path.is_file():
                seeds[int(seed_dir.name[4:])] = read_per_query(path)
        if not seeds:
            raise FileNotFoundError(f"study {study.name}: no finished seed with "
                                    f"per_query/{setting_name(study.test_time)}.npz under {folder}")
        results.append(StudyResult(study.name, study.kind, study.switch, seeds))
    check_same_settings(out_dir, studies)
    return results


def finished_seeds(run_folder: str | Path) -> list[Path]:
    """The ``seed<N>`` folders of one trained model that hold a ``done.json``, by seed."""
    found = [d for d in Path(run_folder).glob("seed*") if d.name[4:].isdigit() and (d / "done.json").is_file()]
    return sorted(found, key=lambda d: int(d.name[4:]))


def study_configs(out_dir: str | Path, run_name: str) -> dict[int, dict]:
    """The resolved config (`config.to_dict`) each finished seed of model `run_name` was trained
    with, from its own ``config.yaml``, by seed."""
    from xtfclip_lib.config import load_config_file, to_dict

    configs = {}
    for seed_dir in finished_seeds(Path(out_dir) / "studies" / run_name):
        configs[int(seed_dir.name[4:])] = to_dict(load_config_file(seed_dir / "config.yaml"))
    return configs


def check_same_settings(out_dir: str | Path, studies) -> None:
    """Raise ValueError unless the studies' models were trained with one setting.

    Each model is compared with the baseline it modifies (``loo_*`` with x_tfclip, ``aoi_*`` with
    tf_clip, tf_clip with x_tfclip), seed by seed against the baseline's first seed: they may
    differ only in ``train.seed`` and in the switch being ablated (the keys of the model's
    training overrides; between the two baselines, any ``features`` switch). The error names the
    two studies and the differing keys.
    """
    from xtfclip_lib.engine import config_differences
    from xtfclip_lib.config import SWITCHES

    runs = list(dict.fromkeys(study.run for study in studies))
    baselines = {}
    for run in runs:
        reference = "x_tfclip" if run.name in ("tf_clip", "x_tfclip") else run.variant
        if reference not in baselines:
            configs = study_configs(out_dir, reference)
            if not configs:
                continue                     # no baseline to compare with (collect_studies says so)
            baselines[reference] = min(configs.items())
        allowed = {"train.seed", *(o.split("=")[0] for o in run.overrides)}
        if run.name in ("tf_clip", "x_tfclip"):
            allowed |= {f"features.{s}" for s in SWITCHES}
        ref_seed, ref_config = baselines[reference]
        for seed, config in study_configs(out_dir, run.name).items():
            differs = [d for d in config_differences(ref_config, config) if d.split(":")[0] not in allowed]
            if differs:
                raise ValueError(f"studies {reference} (seed{ref_seed}) and {run.name} (seed{seed}) were "
                                 f"trained with other settings than their ablated switch: "
                                 f"{'; '.join(differs)}; rerun the workbook to retrain the stale ones")


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


PRINTED_DECIMALS = 1     # the report prints differences in percent with this many decimals


def as_printed(fraction: float) -> float:
    """`fraction` in percent, rounded as the report prints it (`PRINTED_DECIMALS`)."""
    return float(f"{100 * fraction:.{PRINTED_DECIMALS}f}")


def exceeds_noise(delta: float, noise: float, ci_lo: float, ci_hi: float) -> bool:
    """The noise rule (module docstring), decided on the values as printed: |delta| above the
    noise threshold and a paired bootstrap interval that excludes zero. So a row printed
    "+1.1" against "±1.1", or with an interval "[+0.0, +2.1]", is within noise, as it reads."""
    if any(math.isnan(v) for v in (delta, noise, ci_lo, ci_hi)):
        return False
    return abs(as_printed(delta)) > as_printed(noise) and (as_printed(ci_lo) > 0 or as_printed(ci_hi) < 0)


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
                    exceeds = study.name != ref.name and exceeds_noise(delta, noise, d_lo, d_hi)
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


def compared_with(study: str, kind: str) -> str:
    """The baseline a study is a difference from: x_tfclip for leave-one-out studies (what
    removing the switch costs), tf_clip for add-one-in studies (what adding it alone brings);
    each baseline is compared with the other."""
    if kind == "baseline":
        return "tf_clip" if study == "x_tfclip" else "x_tfclip"
    return "x_tfclip" if kind == "leave_one_out" else "tf_clip"


def verdict_table(summary: pd.DataFrame, metric: str = "mAP", case: str = "overall") -> pd.DataFrame:
    """For every ablation study: its difference against the baseline it modifies, and the verdict.

    Leave-one-out studies are compared with x_tfclip (what removing the switch costs), add-one-in
    studies with tf_clip (what adding it alone brings).
    """
    part = summary[(summary.metric == metric) & (summary.case == case) & (summary.kind != "baseline")]
    rows = []
    for _, row in part.iterrows():
        ref = compared_with(row["study"], row["kind"])
        exceeds = bool(row[f"exceeds_noise_vs_{ref}"])
        rows.append({"study": row["study"], "switch": row["switch"], "compared_with": ref,
                     "delta": row[f"delta_vs_{ref}"], "ci_lo": row[f"delta_ci_lo_vs_{ref}"],
                     "ci_hi": row[f"delta_ci_hi_vs_{ref}"], "noise": row[f"noise_vs_{ref}"],
                     "verdict": ("exceeds noise" if exceeds else "within noise")})
    return pd.DataFrame(rows)


def _pct(value: float, sign: str = "+") -> str:
    """A fraction in percent as the report prints it (`as_printed`), signed by default."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{as_printed(value):{sign}.{PRINTED_DECIMALS}f}"


def _markdown(table: pd.DataFrame, index: bool = True) -> str:
    """A GitHub markdown table without the optional `tabulate` dependency."""
    frame = table.rename_axis("study").reset_index() if index else table
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 62rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; display: block; margin: 1rem 0; }
"""


def markdown_to_html(text: str, title: str) -> str:
    """A standalone HTML page of the markdown `text` (the `markdown` package, tables extension)
    with the report's small embedded stylesheet, so the page reads the same as the .md."""
    import markdown

    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def write_report(summary: pd.DataFrame, out_dir: str | Path, context: dict) -> dict[str, Path]:
    """Write ``ablation.md``, ``ablation.csv``, ``ablation.html`` and the PNG plots to `out_dir`.

    `context` says what the numbers are measured on (keys: ``dataset``, ``backbone``, ``preset``,
    ``seeds``, ``spread_seeds``; any more are listed too): the report states it plainly and never
    presents the numbers as the paper's. The HTML page is rendered from the markdown, so both
    say the same; the plots draw the studies whose difference exceeds the noise filled.
    """
    from xtfclip_lib.workbook import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "ablation.csv", "md": out / "ablation.md", "html": out / "ablation.html"}
    atomic_write_text(paths["csv"], summary.to_csv(index=False))

    exceeds = [bool(row[f"exceeds_noise_vs_{compared_with(row['study'], row['kind'])}"])
               for _, row in summary.iterrows()]
    plot_data = summary.rename(columns={"ci_lo": "lo", "ci_hi": "hi"}).assign(exceeds=exceeds)
    for metric in ("R1", "mAP"):
        path = out / f"ablation_{metric}.png"
        plots.ablation_plot(plot_data[plot_data.metric == metric], path=path, metrics=[metric])
        paths[f"png_{metric}"] = path

    title = "X-TFCLIP ablation report"
    lines = [f"# {title}", ""]
    lines += ["**What these numbers are.** " + context.get("statement", (
        "Measured by this project's workbook, not taken from the X-TFCLIP paper: they show what each "
        "switch does in this setting and are not comparable with published AG-VPReID results.")), ""]
    for key, value in context.items():
        if key != "statement":
            lines.append(f"- **{key.replace('_', ' ')}**: {value}")
    lines += ["", "Every metric is in percent. Cells are mean ± standard deviation over seeds (no ± "
              "where a study has one seed). Overall pools the queries of both cases.", ""]
    for case in ("overall", *CASES):
        lines += [f"## {case.replace('_', ' ')}", "", _markdown(headline_table(summary, case)), ""]
    lines += ["## What each switch does (mAP, overall)", "",
              "Leave-one-out rows are compared with x_tfclip, add-one-in rows with tf_clip. Each delta is "
              "the study minus the baseline it is compared with, in percentage points: a **positive** "
              "leave-one-out delta means removing the switch *helps* (a negative one, that the switch "
              "helps); a positive add-one-in delta means adding the switch alone helps.", "",
              "Noise rule: a difference *exceeds noise* only if it is larger than twice the seed-to-seed "
              "standard error (the spread measured on the baselines; the *noise* column) and its 95 % "
              "paired bootstrap interval over queries (*ci*) excludes zero, both judged on the values "
              "as printed; otherwise it is *within noise* and is not ranked.", ""]
    verdicts = verdict_table(summary)
    shown = verdicts.assign(delta=verdicts.delta.map(_pct),
                            ci=[f"[{_pct(a)}, {_pct(b)}]" for a, b in zip(verdicts.ci_lo, verdicts.ci_hi)],
                            noise=verdicts.noise.map(lambda v: "n/a" if math.isnan(v) else f"±{_pct(v, '')}"))
    lines += [_markdown(shown[["study", "compared_with", "delta", "ci", "noise", "verdict"]], index=False), ""]
    ranked = verdicts[verdicts.verdict == "exceeds noise"].sort_values("delta", key=abs, ascending=False)
    if len(ranked):
        lines.append("Differences beyond the noise, largest first: " + ", ".join(
            f"{r.study} ({_pct(r.delta)})" for r in ranked.itertuples()) + ".")
    else:
        lines.append("No difference exceeds the noise at this budget: no switch can be ranked.")
    lines += ["", "In the plots each study's mean has its 95 % bootstrap interval; a filled marker means "
              "its difference from the baseline it is compared with exceeds the noise, a hollow one "
              "that it is within noise. The dashed and dotted lines are tf_clip's and x_tfclip's means.",
              "", "![R1](ablation_R1.png)", "", "![mAP](ablation_mAP.png)", ""]
    text = "\n".join(lines)
    atomic_write_text(paths["md"], text)
    atomic_write_text(paths["html"], markdown_to_html(text, title))
    return paths
