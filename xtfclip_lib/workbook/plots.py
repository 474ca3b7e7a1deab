"""Figures for the notebook workbook: data exploration, training, retrieval and ablations.

Every function builds a `matplotlib.figure.Figure` directly (not through `pyplot`), so it works
under any backend (Agg in tests and papermill, inline in Jupyter), leaves no global figure state
behind, and is shown exactly once when a notebook cell returns it. Each returns the Figure and,
given `path`, also writes it there as a PNG (parent folders are created).

Images come in as frame file paths and are read with PIL, so nothing here depends on the model:
the retrieval figures take a distance matrix and the tracklets' frame paths (`RetrievalResult`).
Metric values are fractions in [0, 1] (STYLE §7); axes show them as percentages.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter
from PIL import Image

logger = logging.getLogger(__name__)

PLATFORM_MARKERS: dict[str, str] = {"ground": "o", "aerial": "^"}
PLATFORM_COLORS: dict[str, str] = {"ground": "tab:blue", "aerial": "tab:orange"}
MATCH_COLOR = "tab:green"
MISMATCH_COLOR = "tab:red"
STRIP_HEIGHT_PX = 64          # every frame of a strip is resized to this height
STRIP_GAP_PX = 2              # white columns between frames of a strip


# ------------------------------------------------------------------------------------------------
# Shared helpers


def save_figure(fig: Figure, path: str | os.PathLike | None, dpi: int = 110) -> Figure:
    """Write `fig` as a PNG to `path` (creating parent folders) when a path is given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
        logger.info("wrote %s", path)
    return fig


def evenly_spaced(num_items: int, num_picks: int) -> np.ndarray:
    """`num_picks` indices spread evenly over 0..num_items-1 (all of them when there are fewer)."""
    if num_items <= 0:
        raise ValueError(f"cannot pick frames from an empty sequence (num_items={num_items})")
    if num_picks <= 0:
        raise ValueError(f"num_picks must be positive, got {num_picks}")
    if num_items <= num_picks:
        return np.arange(num_items)
    return np.unique(np.round(np.linspace(0, num_items - 1, num_picks)).astype(int))


def load_frame(path: str | os.PathLike, height_px: int = STRIP_HEIGHT_PX) -> np.ndarray:
    """One frame as an (H, W, 3) uint8 array, resized to `height_px` keeping its aspect ratio."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width = max(1, round(image.width * height_px / image.height))
            return np.asarray(image.resize((width, height_px), Image.Resampling.BILINEAR))
    except FileNotFoundError:
        raise FileNotFoundError(f"frame {path} not found") from None
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def frame_strip(frames: Sequence[str], num_frames: int = 4,
                height_px: int = STRIP_HEIGHT_PX) -> np.ndarray:
    """Up to `num_frames` evenly spaced frames of one tracklet side by side: (H, W_total, 3) uint8.

    Frames keep their aspect ratio at a common height, so small aerial crops look as blurred as
    they are once enlarged; a thin white gap separates them.
    """
    picks = [load_frame(frames[i], height_px) for i in evenly_spaced(len(frames), num_frames)]
    gap = np.full((height_px, STRIP_GAP_PX, 3), 255, dtype=np.uint8)
    pieces: list[np.ndarray] = []
    for i, frame in enumerate(picks):
        pieces.extend([gap, frame] if i else [frame])
    return np.concatenate(pieces, axis=1)


def _image_axis(ax, image: np.ndarray, title: str | None = None, edge: str | None = None,
                fontsize: float = 7) -> None:
    """Show `image` without ticks; a coloured frame of thick spines when `edge` is given."""
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(edge is not None)
        if edge is not None:
            spine.set_edgecolor(edge)
            spine.set_linewidth(3.0)
    if title:
        ax.set_title(title, fontsize=fontsize)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what}: missing columns {missing}; got {list(frame.columns)}, "
                       f"expected at least {list(columns)}")


# ------------------------------------------------------------------------------------------------
# Data exploration


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


# ------------------------------------------------------------------------------------------------
# Training


LOSS_TERMS: tuple[str, ...] = ("loss", "id_img", "id_proj", "id_tmd", "i2t", "frame",
                               "triplet_img", "triplet_proj", "triplet_tmd")
METRIC_NAMES: tuple[str, ...] = ("R1", "R5", "R10", "R20", "mAP", "mINP")


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


# ------------------------------------------------------------------------------------------------
# Retrieval


@dataclass
class RetrievalResult:
    """What a ranked-gallery figure needs from one retrieval case, independent of the model.

    distmat: (Q, G) query-gallery distances (smaller is closer), after any masking;
    q_pids, q_camids: (Q,); g_pids, g_camids: (G,);
    query_frames, gallery_frames: frame paths per tracklet (Q and G sequences);
    query_names, gallery_names: tracklet names (optional, for titles).
    """
    name: str
    distmat: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    query_frames: Sequence[Sequence[str]]
    gallery_frames: Sequence[Sequence[str]]
    query_names: Sequence[str] | None = None
    gallery_names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.distmat = np.asarray(self.distmat, dtype=float)
        for field_name in ("q_pids", "g_pids", "q_camids", "g_camids"):
            setattr(self, field_name, np.asarray(getattr(self, field_name)).ravel())
        num_q, num_g = self.distmat.shape if self.distmat.ndim == 2 else (-1, -1)
        expected = {"q_pids": num_q, "q_camids": num_q, "query_frames": num_q,
                    "g_pids": num_g, "g_camids": num_g, "gallery_frames": num_g}
        if self.query_names is not None:
            expected["query_names"] = num_q
        if self.gallery_names is not None:
            expected["gallery_names"] = num_g
        for field_name, size in expected.items():
            if len(getattr(self, field_name)) != size:
                raise ValueError(f"RetrievalResult {self.name!r}: {field_name} has "
                                 f"{len(getattr(self, field_name))} entries but distmat has shape "
                                 f"{self.distmat.shape}; expected {size}")

    @classmethod
    def from_tracklets(cls, name: str, query: Sequence[Any], gallery: Sequence[Any],
                       distmat: Any) -> "RetrievalResult":
        """Build from `data.dataset.Tracklet` lists (anything with pid, camid, frames, name)."""
        return cls(name=name, distmat=np.asarray(distmat),
                   q_pids=np.array([t.pid for t in query]),
                   g_pids=np.array([t.pid for t in gallery]),
                   q_camids=np.array([t.camid for t in query]),
                   g_camids=np.array([t.camid for t in gallery]),
                   query_frames=[t.frames for t in query],
                   gallery_frames=[t.frames for t in gallery],
                   query_names=[t.name for t in query], gallery_names=[t.name for t in gallery])

    @property
    def num_queries(self) -> int:
        return self.distmat.shape[0]

    def evaluate(self, max_rank: int = 50) -> dict:
        """`evaluation.evaluate` of this case: ``cmc`` (max_rank,), ``mAP``, ``mINP``, ..."""
        from xtfclip_lib import evaluation  # imported here: plots otherwise needs no metrics

        return evaluation.evaluate(self.distmat, self.q_pids, self.g_pids, self.q_camids,
                                   self.g_camids, max_rank=max_rank)

    def rank1_correct(self, chunk_rows: int = 256) -> np.ndarray:
        """(Q,) bool: whether each query's closest kept gallery item is a true match.

        Vectorised in blocks of `chunk_rows` queries (no loop over queries); same protocol and
        tie rule as `top_k` (argmin returns the first of equal distances).
        """
        correct = np.zeros(self.num_queries, dtype=bool)
        for start in range(0, self.num_queries, chunk_rows):
            rows = slice(start, start + chunk_rows)
            dropped = ((self.g_pids[None, :] == self.q_pids[rows, None])
                       & (self.g_camids[None, :] == self.q_camids[rows, None]))
            distances = np.where(dropped, np.inf, self.distmat[rows])
            first = distances.argmin(axis=1)
            correct[rows] = (self.g_pids[first] == self.q_pids[rows]) & ~dropped.all(axis=1)
        return correct

    def top_k(self, query_index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the k closest kept gallery items of one query, and whether each is a match.

        Same protocol as the metrics (METHOD §5): gallery items with the query's pid and camera
        are dropped; ties keep gallery order.
        """
        if not 0 <= query_index < self.num_queries:
            raise IndexError(f"RetrievalResult {self.name!r}: query index {query_index} out of "
                             f"range 0..{self.num_queries - 1}")
        kept = ~((self.g_pids == self.q_pids[query_index])
                 & (self.g_camids == self.q_camids[query_index]))
        candidates = np.flatnonzero(kept)
        order = candidates[np.argsort(self.distmat[query_index, candidates], kind="stable")][:k]
        return order, self.g_pids[order] == self.q_pids[query_index]


def retrieval_results(lists: Mapping[str, Sequence[Any]], cases: Sequence[Any],
                      distmats: Mapping[str, Any]) -> dict[str, RetrievalResult]:
    """One `RetrievalResult` per case, keyed by case name.

    `lists` and `cases` as `inference.test_protocol` returns them (tracklet lists by split name;
    cases with ``name``, ``query`` and ``gallery`` naming those lists), `distmats` as
    `inference.case_distmats` returns them (case name -> (Q, G) distances).
    """
    return {case.name: RetrievalResult.from_tracklets(case.name, lists[case.query],
                                                      lists[case.gallery], distmats[case.name])
            for case in cases}


def select_queries(case: RetrievalResult, num_queries: int, seed: int = 0) -> list[int]:
    """A seeded mix of queries whose rank-1 is right and queries whose rank-1 is wrong.

    Half of the picks (rounded up) come from the successes, the rest from the failures, topped
    up from the other group when one runs short, so a figure shows both what works and what
    fails. Returned in increasing order.
    """
    if num_queries <= 0:
        raise ValueError(f"num_queries must be positive, got {num_queries}")
    rng = np.random.default_rng(seed)
    correct = case.rank1_correct()
    hits, misses = np.flatnonzero(correct), np.flatnonzero(~correct)
    want_hits = min(len(hits), max(num_queries - len(misses), -(-num_queries // 2)))
    want_misses = min(len(misses), num_queries - want_hits)
    picks = np.concatenate([rng.choice(hits, want_hits, replace=False),
                            rng.choice(misses, want_misses, replace=False)])
    return sorted(int(q) for q in picks)


def cmc_curves(curves: Mapping[str, Any], path: str | os.PathLike | None = None,
               max_rank: int = 20, title: str | None = None) -> Figure:
    """CMC curves (match rate at rank 1..max_rank), one panel per case, one line per model.

    `curves` maps case -> {model label -> curve}, e.g. ``{"case1": {"x_tfclip": cmc}}``; a
    flat {label -> curve} mapping gives a single panel. A curve is an array of fractions, entry k
    for rank k+1 (`evaluation.evaluate`'s ``cmc``; longer ones are cut at `max_rank`), or a
    `RetrievalResult`, evaluated here with the standard protocol.
    """
    if not curves:
        raise ValueError("cmc_curves: no curves given")
    first = next(iter(curves.values()))
    panels = dict(curves) if isinstance(first, Mapping) else {title or "": dict(curves)}
    panels = {case: {label: cmc.evaluate(max_rank)["cmc"] if isinstance(cmc, RetrievalResult)
                     else cmc for label, cmc in lines.items()} for case, lines in panels.items()}
    fig = Figure(figsize=(4.2 * len(panels), 3.3), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (case, lines) in zip(axes, panels.items()):
        for label, cmc in lines.items():
            cmc = np.asarray(cmc, dtype=float).ravel()[:max_rank]
            if cmc.size == 0:
                raise ValueError(f"cmc_curves: curve {label!r} of {case!r} is empty")
            ranks = np.arange(1, cmc.size + 1)
            ax.plot(ranks, cmc, marker="o", ms=3, label=f"{label} (R1 {cmc[0]:.1%})")
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(1, max_rank)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.grid(alpha=0.3)
        ax.set_title(case, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    if title and isinstance(first, Mapping):
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _draw_ranked(fig: Figure, rows: Sequence[tuple[RetrievalResult, int]], top_k: int,
                 frames_per_strip: int, height_px: int) -> None:
    axes = fig.subplots(len(rows), top_k + 1, squeeze=False)
    for row_axes, (case, q) in zip(axes, rows):
        query_name = case.query_names[q] if case.query_names is not None else f"query {q}"
        _image_axis(row_axes[0], frame_strip(case.query_frames[q], frames_per_strip, height_px),
                    f"{case.name} · {query_name}\nid {case.q_pids[q]} C{case.q_camids[q]}",
                    edge="black")
        ranked, matches = case.top_k(q, top_k)
        for rank, ax in enumerate(row_axes[1:]):
            if rank >= len(ranked):
                ax.set_visible(False)
                continue
            g = ranked[rank]
            _image_axis(ax, frame_strip(case.gallery_frames[g], frames_per_strip, height_px),
                        f"#{rank + 1} d={case.distmat[q, g]:.3f}\nid {case.g_pids[g]} "
                        f"C{case.g_camids[g]}",
                        edge=MATCH_COLOR if matches[rank] else MISMATCH_COLOR)


def ranked_gallery(case: RetrievalResult, query_indices: Sequence[int], top_k: int = 5,
                   frames_per_strip: int = 4, path: str | os.PathLike | None = None,
                   height_px: int = STRIP_HEIGHT_PX) -> Figure:
    """For each chosen query: its frame strip, then its top-k gallery tracklets as strips.

    A gallery strip is framed green for a true match (same pid) and red otherwise, and titled
    with its rank, distance, pid and camera; the query strip is framed black. The figure has
    ``len(query_indices) * (top_k + 1)`` axes (some hidden when fewer than top_k remain).
    """
    if not len(query_indices):
        raise ValueError("ranked_gallery: no query indices given")
    if top_k <= 0:
        raise ValueError(f"ranked_gallery: top_k must be positive, got {top_k}")
    fig = Figure(figsize=(1.9 * (top_k + 1), 1.55 * len(query_indices)), layout="constrained")
    _draw_ranked(fig, [(case, int(q)) for q in query_indices], top_k, frames_per_strip, height_px)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------
# Embeddings


def embed_2d(features: Any, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates by PCA (numpy SVD) or t-SNE (scikit-learn).

    PCA is deterministic (each axis' sign is fixed so its largest loading is positive) and fast;
    t-SNE shows local neighbourhoods better but distances between clusters mean little.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"embed_2d: expected (N, D) features with N >= 2, got shape "
                         f"{features.shape}")
    if method == "pca":
        centred = features - features.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:2]
        signs = np.sign(components[np.arange(len(components)),
                                   np.abs(components).argmax(axis=1)])
        coords = centred @ (components * signs[:, None]).T
        if coords.shape[1] < 2:  # D == 1: nothing to show on the second axis
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        return coords
    if method == "tsne":
        from sklearn.manifold import TSNE  # imported here: slow to import, rarely needed

        perplexity = float(min(30.0, max(1.0, (features.shape[0] - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca",
                    random_state=seed).fit_transform(features)
    raise ValueError(f"embed_2d: unknown method {method!r}; expected 'pca' or 'tsne'")


def robust_limits(values: Any, percentile: float = 5.0, pad: float = 0.5) -> tuple[float, float]:
    """Axis limits that a few far outliers cannot stretch: the `percentile` and
    100 - `percentile` percentiles, widened by `pad` times their distance on each side, and never
    beyond the data's own range.

    For roughly normal data (5th-95th percentile, pad 0.5) that is about +-3.3 standard
    deviations, so every ordinary point stays inside, while one point far away no longer
    squashes all the others into a corner.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError("robust_limits: no finite values")
    low, high = np.percentile(values, [percentile, 100.0 - percentile])
    span = high - low
    if span <= 0:                       # (nearly) constant: any range around the value
        span = max(abs(float(low)), 1.0) * 0.1
    lo, hi = max(values.min(), low - pad * span), min(values.max(), high + pad * span)
    margin = 0.05 * max(hi - lo, span)  # room for the markers at the edge
    return float(lo - margin), float(hi + margin)


def embedding_plot(features: Any, pids: Sequence[int], platforms: Sequence[str],
                   method: str = "pca", path: str | os.PathLike | None = None, seed: int = 0,
                   max_ids: int | None = None, normalize: bool = True,
                   title: str | None = None, robust: bool = True) -> Figure:
    """Tracklet features in 2-D, coloured by identity, marked by platform (o ground, ^ aerial).

    features: (N, D); pids, platforms: (N,). Points of one identity from both platforms lying
    together is what cross-platform re-ID needs; an aerial cluster apart from a ground one shows
    the platform gap. Colours repeat after 20 identities, so `max_ids` keeps a seeded random
    subset of identities (all when None). With `normalize`, rows are L2-normalised first, as the
    retrieval distance is (METHOD §5). With `robust`, the axis limits come from
    `robust_limits`, so one outlying tracklet cannot squash the rest; the points left outside
    are counted in the lower-left corner.
    """
    features = np.asarray(features, dtype=np.float64)
    pids = np.asarray(pids).ravel()
    platforms = np.asarray(platforms).ravel()
    if not len(pids) == len(platforms) == len(features):
        raise ValueError(f"embedding_plot: {len(features)} features, {len(pids)} pids and "
                         f"{len(platforms)} platforms; expected one of each per tracklet")
    unknown = sorted(set(platforms) - set(PLATFORM_MARKERS))
    if unknown:
        raise ValueError(f"embedding_plot: unknown platforms {unknown}; expected "
                         f"{list(PLATFORM_MARKERS)}")
    identities = np.unique(pids)
    if max_ids is not None and len(identities) > max_ids:
        identities = np.sort(np.random.default_rng(seed).choice(identities, max_ids, replace=False))
        keep = np.isin(pids, identities)
        features, pids, platforms = features[keep], pids[keep], platforms[keep]
    if normalize:
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    coords = embed_2d(features, method=method, seed=seed)
    color_index = np.searchsorted(identities, pids) % 20
    colors = np.asarray(_tab20())[color_index]
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    handles = []
    for platform, marker in PLATFORM_MARKERS.items():
        keep = platforms == platform
        if keep.any():
            ax.scatter(coords[keep, 0], coords[keep, 1], c=colors[keep], marker=marker, s=36,
                       edgecolors="k", linewidths=0.4)
            handles.append(Line2D([], [], ls="", marker=marker, color="grey", label=platform))
    ax.legend(handles=handles, fontsize=8, title=f"{len(identities)} identities",
              title_fontsize=8)
    if robust:
        (x0, x1), (y0, y1) = robust_limits(coords[:, 0]), robust_limits(coords[:, 1])
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        outside = int(((coords[:, 0] < x0) | (coords[:, 0] > x1) | (coords[:, 1] < y0)
                       | (coords[:, 1] > y1)).sum())
        if outside:
            ax.text(0.01, 0.01, f"{outside} of {len(coords)} points outside the axes",
                    transform=ax.transAxes, fontsize=7, color="dimgrey")
    axis_name = "PC" if method == "pca" else "t-SNE "
    ax.set_xlabel(f"{axis_name}1")
    ax.set_ylabel(f"{axis_name}2")
    ax.set_title(title or f"test features ({method.upper() if method == 'pca' else 't-SNE'})",
                 fontsize=9)
    return save_figure(fig, path)


def _tab20() -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    return [colormaps["tab20"](i) for i in range(20)]


# ------------------------------------------------------------------------------------------------
# Ablations


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
    if {"lo", "hi"} <= set(summary.columns):
        lower = summary["mean"] - summary["lo"]
        upper = summary["hi"] - summary["mean"]
    elif "std" in summary.columns:
        lower = upper = summary["std"]
    else:
        raise KeyError(f"ablation_plot: need columns 'lo' and 'hi' or 'std' for the error bars; "
                       f"got {list(summary.columns)}")
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
            ax = axes[row, col]
            rows = summary[(summary["metric"] == metric) & (summary["case"] == case)]
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
            ax.set_title(f"{case} · {metric}", fontsize=9)
            ax.grid(alpha=0.3, axis="x" if forest else "y")
    present = [s for s in reference_studies if s in positions]
    handles = [Line2D([], [], color="k", ls=("--", ":")[i % 2], lw=0.8, label=s) for i, s in enumerate(present)]
    if "exceeds" in summary:
        handles += [Line2D([], [], ls="", marker="o", color="tab:blue", label="exceeds noise"),
                    Line2D([], [], ls="", marker="o", markerfacecolor="white", color="tab:blue",
                           label="within noise")]
    if handles:
        axes[0, 0].legend(handles=handles, fontsize=7, loc="best")
    if forest:
        for ax in axes[:, 0]:
            ax.set_yticks(range(len(studies)), studies, fontsize=7)
        axes[0, 0].invert_yaxis()  # the y axis is shared: first study on top in every panel
    else:
        for ax in axes[-1]:
            ax.set_xticks(range(len(studies)), studies, rotation=60, ha="right", fontsize=7)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------
# Query browser


def query_browser(cases: Mapping[str, RetrievalResult], top_k: int = 5, frames_per_strip: int = 4,
                  interactive: bool = False, static_queries: int = 3, seed: int = 0,
                  path: str | os.PathLike | None = None) -> Any:
    """Browse retrieval results: choose a case and a query, see its top-k gallery.

    interactive=True returns an ipywidgets box (case dropdown, query slider, the ranked-gallery
    figure redrawn on change) for a live Jupyter frontend. interactive=False -- what headless
    papermill runs use, since widgets need a frontend to draw them -- returns one static Figure
    with `static_queries` queries per case (chosen by `select_queries`), saved to `path` if given.
    Either return value displays itself when it ends a notebook cell; `path` is ignored when
    interactive.
    """
    if not cases:
        raise ValueError("query_browser: no cases given")
    if not interactive:
        rows = [(case, q) for case in cases.values()
                for q in select_queries(case, min(static_queries, case.num_queries), seed)]
        fig = Figure(figsize=(1.9 * (top_k + 1), 1.55 * len(rows)), layout="constrained")
        _draw_ranked(fig, rows, top_k, frames_per_strip, STRIP_HEIGHT_PX)
        return save_figure(fig, path)

    import ipywidgets as widgets
    from IPython.display import display

    names = list(cases)
    case_box = widgets.Dropdown(options=names, value=names[0], description="case")
    query_slider = widgets.IntSlider(value=0, min=0, max=cases[names[0]].num_queries - 1,
                                     description="query", continuous_update=False)
    output = widgets.Output()

    def redraw(_change=None) -> None:
        case = cases[case_box.value]
        query_slider.max = case.num_queries - 1
        with output:
            output.clear_output(wait=True)
            display(ranked_gallery(case, [query_slider.value], top_k, frames_per_strip))

    case_box.observe(redraw, names="value")
    query_slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([case_box, query_slider]), output])


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
