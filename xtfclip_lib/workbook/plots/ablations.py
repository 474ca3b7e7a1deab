"""Ablation figures (notebook 06 and the report): each study's metric with its interval."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from xtfclip_lib.workbook.plots.common import _require_columns, save_figure


def ablation_plot(summary: pd.DataFrame, path: str | os.PathLike | None = None,
                  metrics: Sequence[str] | None = None, kind: str = "forest",
                  reference_studies: Sequence[str] = ("tf_clip", "x_tfclip")) -> Figure:
    """Forest (or bar) plot of each study's metric with error bars: one panel per metric x case.

    `summary` is tidy, one row per (study, case, metric), with columns:
      ``study`` (e.g. "tf_clip", "x_tfclip", "no_attention_pooling"), ``case`` (e.g. "case1"),
      ``metric`` (e.g. "R1", "mAP"), ``mean`` (a fraction), and either ``lo`` and ``hi`` (the
      interval's bounds, e.g. a 95 % bootstrap interval) or ``std`` (drawn as mean ± std).
    When both are present, lo/hi win. Studies keep their order of first appearance, top to
    bottom. Dashed vertical (forest) or horizontal (bar) lines mark `reference_studies`' means,
    so each study reads as a difference from TF-CLIP and from X-TFCLIP. An optional boolean
    ``exceeds`` column draws the studies whose difference exceeds the noise filled and the others
    hollow, with a legend saying so.
    """
    _require_columns(summary, ("study", "case", "metric", "mean"), "ablation_plot")
    lower, upper = _error_bars(summary)
    if kind not in ("forest", "bar"):
        raise ValueError(f"ablation_plot: unknown kind {kind!r}; expected 'forest' or 'bar'")
    summary = summary.assign(_lower=np.clip(lower.fillna(0.0), 0, None),
                             _upper=np.clip(upper.fillna(0.0), 0, None))
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(summary["metric"]))
    unknown = sorted(set(metrics) - set(summary["metric"]))
    if unknown:
        raise KeyError(f"ablation_plot: metrics {unknown} not in summary; available "
                       f"{sorted(summary['metric'].unique())}")
    cases = list(dict.fromkeys(summary["case"]))
    studies = list(dict.fromkeys(summary["study"]))
    positions = {study: i for i, study in enumerate(studies)}
    forest = kind == "forest"
    size = (3.6 * len(cases), 0.28 * len(studies) * len(metrics) + 1.2 * len(metrics)) if forest \
        else (0.45 * len(studies) * len(cases) + 2.0, 3.6 * len(metrics))
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(len(metrics), len(cases), squeeze=False, sharey=forest, sharex=not forest)
    for row, metric in enumerate(metrics):
        for col, case in enumerate(cases):
            rows = summary[(summary["metric"] == metric) & (summary["case"] == case)]
            _draw_panel(axes[row, col], rows, f"{case} · {metric}", positions, reference_studies, forest)
    _legend(axes[0, 0], [s for s in reference_studies if s in positions], "exceeds" in summary)
    if forest:
        for ax in axes[:, 0]:
            ax.set_yticks(range(len(studies)), studies, fontsize=7)
        axes[0, 0].invert_yaxis()  # the y axis is shared: first study on top in every panel
    else:
        for ax in axes[-1]:
            ax.set_xticks(range(len(studies)), studies, rotation=60, ha="right", fontsize=7)
    return save_figure(fig, path)


def _error_bars(summary: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The distance of each row's interval below and above its mean: from ``lo`` and ``hi`` when
    present, else ``std`` on both sides; KeyError without either."""
    if {"lo", "hi"} <= set(summary.columns):
        return summary["mean"] - summary["lo"], summary["hi"] - summary["mean"]
    if "std" in summary.columns:
        return summary["std"], summary["std"]
    raise KeyError(f"ablation_plot: need columns 'lo' and 'hi' or 'std' for the error bars; "
                   f"got {list(summary.columns)}")


def _draw_panel(ax, rows: pd.DataFrame, title: str, positions: dict[str, int],
                reference_studies: Sequence[str], forest: bool) -> None:
    """One metric x case panel of `ablation_plot`: the studies' means with their error bars
    (filled where they exceed the noise), and a line at each reference study's mean."""
    where = rows["study"].map(positions).to_numpy()
    err = np.vstack([rows["_lower"].to_numpy(), rows["_upper"].to_numpy()])
    colors = np.array(["k" if s in reference_studies else "tab:blue" for s in rows["study"]])
    filled = rows["exceeds"].to_numpy(bool) if "exceeds" in rows else np.ones(len(rows), bool)
    if forest:
        ax.errorbar(rows["mean"], where, xerr=err, fmt="none", ecolor="grey", capsize=2)
        ax.scatter(rows["mean"][filled], where[filled], c=colors[filled], s=20, zorder=3)
        ax.scatter(rows["mean"][~filled], where[~filled], facecolors="white",
                   edgecolors=colors[~filled], s=20, zorder=3)
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    else:
        ax.bar(where, rows["mean"], yerr=err, color=np.where(filled, colors, "white"),
               edgecolor=colors, capsize=2, alpha=0.8)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    for i, study in enumerate(s for s in reference_studies if s in set(rows["study"])):
        value = float(rows.loc[rows["study"] == study, "mean"].iloc[0])
        line = ax.axvline if forest else ax.axhline
        line(value, color="k", ls=("--", ":")[i % 2], lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x" if forest else "y")


def _legend(ax, references: list[str], with_noise: bool) -> None:
    """The legend of `ablation_plot` on `ax`: the reference lines and, `with_noise`, what a filled
    and a hollow marker mean; none when there is nothing to explain."""
    handles = [Line2D([], [], color="k", ls=("--", ":")[i % 2], lw=0.8, label=s) for i, s in enumerate(references)]
    if with_noise:
        handles += [Line2D([], [], ls="", marker="o", color="tab:blue", label="exceeds noise"),
                    Line2D([], [], ls="", marker="o", markerfacecolor="white", color="tab:blue",
                           label="within noise")]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")
