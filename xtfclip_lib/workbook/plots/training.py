"""Training figures (notebooks 02 and 04): loss and metric curves, diagnostics, backbone pretraining."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from xtfclip_lib.evaluation import METRIC_NAMES
from xtfclip_lib.workbook.plots.common import _require_columns, save_figure

LOSS_TERMS: tuple[str, ...] = ("loss", "id_img", "id_proj", "id_tmd", "i2t", "frame",
                               "triplet_img", "triplet_proj", "triplet_tmd")


def training_curves(metrics: pd.DataFrame, path: str | os.PathLike | None = None,
                    loss_columns: Sequence[str] | None = None, lr_column: str | None = "lr",
                    metric_columns: Sequence[str] | None = None) -> Figure:
    """Three panels over epochs: the loss terms, the learning rate, and the validation metrics.

    `metrics` has one row per epoch with column ``epoch`` -- the engine's ``metrics.csv``.
    Unless given, the loss columns are the `Criterion` terms present (``loss`` = the weighted
    total, ``id_img`` ... ``triplet_tmd``) and any other column starting with ``loss``; the
    metric columns are ``<prefix>_<name>`` for a prefix ``val`` or ``test`` (how the epoch was
    selected) and a name in `METRIC_NAMES` (R1, R5, mAP, ...). Epochs without validation hold
    empty cells and are skipped for those columns.
    """
    _require_columns(metrics, ("epoch",), "training_curves")
    columns = list(metrics.columns)
    if loss_columns is None:
        loss_columns = [c for c in columns if c in LOSS_TERMS
                        or (c.startswith("loss") and c not in LOSS_TERMS)]
    if metric_columns is None:
        metric_columns = [c for c in columns if "_" in c and c.split("_", 1)[0] in ("val", "test")
                          and c.split("_", 1)[1] in METRIC_NAMES]
    lr_column = lr_column if lr_column in columns else None
    _require_columns(metrics, [*loss_columns, *metric_columns], "training_curves")
    epochs = metrics["epoch"].to_numpy(dtype=float)
    fig = Figure(figsize=(12, 3.2), layout="constrained")
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)

    def plot(ax, column, **kwargs):
        values = metrics[column].to_numpy(dtype=float)
        keep = np.isfinite(values)
        ax.plot(epochs[keep], values[keep], label=column, **kwargs)

    for column in loss_columns:
        plot(ax_loss, column, lw=2.0 if column == "loss" else 1.2)
    ax_loss.set_title("training loss terms", fontsize=9)
    if lr_column:
        plot(ax_lr, lr_column, color="k")
        ax_lr.set_yscale("log")
    ax_lr.set_title("base learning rate", fontsize=9)
    for column in metric_columns:
        plot(ax_val, column, marker="o", ms=3)
    ax_val.set_ylim(0, 1.02)
    ax_val.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    prefixes = sorted({c.split("_", 1)[0] for c in metric_columns if "_" in c})
    ax_val.set_title(f"retrieval during training ({', '.join(prefixes) or 'none logged'})",
                     fontsize=9)
    for ax in (ax_loss, ax_lr, ax_val):
        ax.set_xlabel("epoch")
        if ax.get_lines() and ax is not ax_lr:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


ACCURACY_TERMS = ("acc_img", "acc_proj", "acc_tmd", "acc_i2t", "acc_frame")
DISTANCE_FEATURES = ("img", "proj", "tmd")


def training_diagnostics(metrics: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Two panels over epochs: the training ID accuracies, and the hardest-positive /
    hardest-negative distances batch-hard triplet sees (solid / dashed, one colour per feature).

    `metrics` is the engine's ``metrics.csv``. Accuracies rising and the negative distance staying
    above the positive one mean re-ID training learns; both distances falling towards zero with
    accuracies at chance is the collapse METHOD §8 warns of.
    """
    _require_columns(metrics, ("epoch",), "training_diagnostics")
    epochs = metrics["epoch"].to_numpy(dtype=float)
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    ax_acc, ax_dist = fig.subplots(1, 2)
    for column in (c for c in ACCURACY_TERMS if c in metrics):
        ax_acc.plot(epochs, metrics[column].to_numpy(dtype=float), label=column, marker="o", ms=3)
    ax_acc.set_ylim(0, 1.02)
    ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax_acc.set_title("training ID accuracy", fontsize=9)
    for i, name in enumerate(DISTANCE_FEATURES):
        if f"dist_pos_{name}" in metrics:
            ax_dist.plot(epochs, metrics[f"dist_pos_{name}"].to_numpy(dtype=float), color=f"C{i}",
                         label=f"f_{name} hardest positive")
            ax_dist.plot(epochs, metrics[f"dist_neg_{name}"].to_numpy(dtype=float), color=f"C{i}",
                         ls="--", label=f"f_{name} hardest negative")
    ax_dist.set_ylim(bottom=0)
    ax_dist.set_title("batch-hard triplet distances", fontsize=9)
    for ax in (ax_acc, ax_dist):
        ax.set_xlabel("epoch")
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged by this run", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path)


def pretraining_summary(info: Mapping[str, Any], path: str | os.PathLike | None = None) -> Figure:
    """Loss curve, feature spread and zero-shot caption retrieval before/after a tiny-CLIP pretraining.

    `info` is `workbook.ensure_backbone`'s result: the JSON sidecar of `pretrain.pretrain_tiny_clip`
    (its ``metrics`` hold ``loss_curve`` as [step, loss] pairs, ``spread_before`` /
    ``spread_after`` with ``mean_cosine`` / ``mean_cosine_proj`` of the pooled tracklet features,
    and ``zero_shot_before`` / ``zero_shot_after`` with ``top1``, ``top1_aerial``, ``top1_ground``
    and ``chance``). Without metrics (OpenAI weights, random init) the panels say so.
    """
    metrics = info.get("metrics") or {}
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    loss_ax, spread_ax, shot_ax = fig.subplots(1, 3)
    curve = np.asarray(metrics.get("loss_curve") or [], dtype=float).reshape(-1, 2)
    if len(curve):
        loss_ax.plot(curve[:, 0], curve[:, 1], color="C0")
        loss_ax.set(xlabel="step", ylabel="contrastive loss",
                    title=f"pretraining loss ({int(curve[-1, 0])} steps)")
    spread = [metrics.get("spread_before"), metrics.get("spread_after")]
    if all(spread):
        keys, x = ["mean_cosine", "mean_cosine_proj"], np.arange(2)
        spread_ax.bar(x - 0.2, [spread[0].get(k, np.nan) for k in keys], 0.4, label="untrained", color="0.7")
        spread_ax.bar(x + 0.2, [spread[1].get(k, np.nan) for k in keys], 0.4, label="pretrained", color="C0")
        spread_ax.set_xticks(x, ["class token (f_img)", "projected (f_proj)"])
        spread_ax.set(title="mean pairwise cosine, training tracklets", ylim=(min(0, spread_ax.get_ylim()[0]), 1))
        spread_ax.legend(fontsize=8)
    before, after = metrics.get("zero_shot_before"), metrics.get("zero_shot_after")
    if before and after:
        groups = ["top1", "top1_ground", "top1_aerial"]
        x = np.arange(len(groups))
        shot_ax.bar(x - 0.2, [before.get(g, np.nan) for g in groups], 0.4, label="untrained", color="0.7")
        shot_ax.bar(x + 0.2, [after.get(g, np.nan) for g in groups], 0.4, label="pretrained", color="C0")
        shot_ax.axhline(after.get("chance", np.nan), color="k", ls="--", lw=1, label="chance")
        shot_ax.set_xticks(x, ["all crops", "ground", "aerial"])
        shot_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        shot_ax.set(title="zero-shot caption retrieval (held-out ids)", ylim=(0, 1))
        shot_ax.legend(fontsize=8)
    for ax in (loss_ax, spread_ax, shot_ax):
        if not ax.has_data():
            ax.text(0.5, 0.5, f"no pretraining metrics\n({info.get('source', 'unknown source')})",
                    ha="center", va="center", transform=ax.transAxes, wrap=True)
            ax.set_axis_off()
    return save_figure(fig, path)
