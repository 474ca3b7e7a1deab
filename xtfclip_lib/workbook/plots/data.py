"""Data-exploration figures (notebook 01): tracklet lengths, soft-biometric attributes, identities."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image

from xtfclip_lib.workbook.plots.common import (PLATFORM_COLORS, _image_axis, _require_columns, frame_strip,
                                               save_figure)


def tracklet_length_histogram(lengths: pd.DataFrame, path: str | os.PathLike | None = None,
                              bins: int | Sequence[float] = 15) -> Figure:
    """Tracklet lengths (frames) per split, ground and aerial overlaid: one panel per split.

    `lengths` is tidy, one row per tracklet, with columns ``split``, ``platform`` ("ground" |
    "aerial") and ``num_frames`` (as `explore.tracklet_table` returns). Shared bin edges make the
    panels comparable; METHOD §1 samples T frames from each, so short tracklets repeat frames.
    """
    _require_columns(lengths, ("split", "platform", "num_frames"), "tracklet_length_histogram")
    if lengths.empty:
        raise ValueError("tracklet_length_histogram: `lengths` has no rows")
    splits = list(dict.fromkeys(lengths["split"]))
    edges = np.histogram_bin_edges(lengths["num_frames"].to_numpy(), bins=bins)
    fig = Figure(figsize=(3.0 * len(splits), 2.8), layout="constrained")
    axes = fig.subplots(1, len(splits), sharex=True, squeeze=False)[0]
    for ax, split in zip(axes, splits):
        rows = lengths[lengths["split"] == split]
        for platform in ("ground", "aerial"):
            values = rows.loc[rows["platform"] == platform, "num_frames"].to_numpy()
            if len(values):
                ax.hist(values, bins=edges, alpha=0.6, color=PLATFORM_COLORS[platform],
                        label=f"{platform} ({len(values)})")
        ax.set_title(split, fontsize=9)
        ax.set_xlabel("frames per tracklet")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("tracklets")
    return save_figure(fig, path)


def attribute_grid(distribution: pd.DataFrame, path: str | os.PathLike | None = None,
                   ncols: int = 5) -> Figure:
    """One small bar chart per soft-biometric attribute (15 for AG-VPReID): share of ids per code.

    `distribution` is tidy, one row per (split, attribute, code), with columns ``split``,
    ``attribute``, ``code``, ``fraction`` and ``unknown`` (bool: the code means "unknown"), as
    `explore.attribute_distribution` returns. Splits are side-by-side bars; the unknown code is
    hatched, since switch 7 (METHOD §4) ignores it and a large unknown share weakens the mask.
    With a ``value`` column (what each code means, e.g. "female"), the bars are labelled with
    it, so a reader need not look codes up; without one, with the codes.
    """
    _require_columns(distribution, ("split", "attribute", "code", "fraction", "unknown"),
                     "attribute_grid")
    attributes = list(dict.fromkeys(distribution["attribute"]))
    splits = list(dict.fromkeys(distribution["split"]))
    if not attributes:
        raise ValueError("attribute_grid: `distribution` has no rows")
    nrows = -(-len(attributes) // ncols)
    named = "value" in distribution.columns
    fig = Figure(figsize=(2.6 * ncols, (3.0 if named else 2.1) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    width = 0.8 / len(splits)
    colors = [f"C{i}" for i in range(len(splits))]
    for ax, attribute in zip(axes, attributes):
        rows = distribution[distribution["attribute"] == attribute]
        codes = np.sort(rows["code"].unique())
        for i, split in enumerate(splits):
            part = rows[rows["split"] == split].set_index("code").reindex(codes)
            hatches = ["///" if bool(u) else "" for u in part["unknown"].fillna(False)]
            ax.bar(codes + (i - (len(splits) - 1) / 2) * width, part["fraction"].fillna(0.0),
                   width=width, color=colors[i], hatch=hatches, edgecolor="white", linewidth=0,
                   label=split)
        ax.set_title(attribute, fontsize=9)
        if named:
            labels = rows.drop_duplicates("code").set_index("code")["value"].reindex(codes)
            ax.set_xticks(codes, [str(v) for v in labels], rotation=60, ha="right",
                          rotation_mode="anchor")
        else:
            ax.set_xticks(codes)
        ax.tick_params(labelsize=6)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    for ax in axes[len(attributes):]:
        fig.delaxes(ax)
    axes[0].legend(fontsize=6, title="hatched: unknown", title_fontsize=6)
    return save_figure(fig, path)


def _tracklet_row(item: Any) -> tuple[str, Sequence[str]]:
    """(title, frame paths) of a Tracklet-like object or of a (title, frames) pair."""
    if hasattr(item, "frames"):
        with Image.open(item.frames[0]) as image:
            width, height = image.size
        title = (f"C{item.camid} {item.platform}\n{item.name}\n"
                 f"{len(item.frames)} frames, {width}x{height} px")
        return title, item.frames
    if isinstance(item, tuple) and len(item) == 2:
        return str(item[0]), item[1]
    raise TypeError(f"expected a Tracklet (with .frames, .camid, .platform, .name) or a "
                    f"(title, frame paths) pair, got {type(item).__name__}")


def identity_montage(tracklets: Sequence[Any], num_frames: int = 6,
                     path: str | os.PathLike | None = None, title: str | None = None,
                     height_px: int = 96) -> Figure:
    """One row per tracklet of an identity, `num_frames` evenly spaced frames each.

    `tracklets` are `data.dataset.Tracklet` objects (labelled with camera, platform, name,
    length and native frame size) or (title, frame paths) pairs. Frames are shown at one
    height, so the low resolution of the aerial (UAV) crops shows as blur beside ground views.
    """
    if not tracklets:
        raise ValueError("identity_montage: no tracklets given")
    rows = [_tracklet_row(t) for t in tracklets]
    strips = [frame_strip(frames, num_frames, height_px) for _, frames in rows]
    widest = max(s.shape[1] for s in strips)
    row_height_in = 1.4
    fig = Figure(figsize=(row_height_in * widest / height_px + 1.8, row_height_in * len(rows)),
                 layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (row_title, _), strip in zip(axes, rows, strips):
        # pad to the widest strip so every row starts at the left edge at the same scale
        padded = np.full((strip.shape[0], widest, 3), 255, dtype=np.uint8)
        padded[:, :strip.shape[1]] = strip
        _image_axis(ax, padded)
        ax.set_ylabel(row_title, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
