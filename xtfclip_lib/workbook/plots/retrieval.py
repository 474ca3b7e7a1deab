"""Retrieval figures (notebook 05): the ranked gallery of chosen queries, CMC curves, the query browser.

`RetrievalResult` holds one case's distances, ids and frame paths; its ranking follows the
evaluation's protocol (`evaluation.protocol_mask`, `evaluation.evaluate`), so a figure shows
exactly what the metrics count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from xtfclip_lib import evaluation
from xtfclip_lib.workbook.plots.common import (MATCH_COLOR, MISMATCH_COLOR, STRIP_HEIGHT_PX, _image_axis,
                                               frame_strip, save_figure)


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
        return evaluation.evaluate(self.distmat, self.q_pids, self.g_pids, self.q_camids,
                                   self.g_camids, max_rank=max_rank)

    def rank1_correct(self, chunk_rows: int = 256) -> np.ndarray:
        """(Q,) bool: whether each query's closest kept gallery item is a true match.

        The queries whose first true match `evaluation.evaluate` ranks first (``first_rank == 1``
        of the valid queries): the metrics' protocol and tie rule, as in `top_k`. A case in which
        no query has a true match, or with NaN distances, is `evaluate`'s ValueError, as for its
        metrics. `chunk_rows` is accepted for callers of the earlier blockwise version; `evaluate`
        bounds its memory itself.
        """
        result = evaluation.evaluate(self.distmat, self.q_pids, self.g_pids, self.q_camids,
                                     self.g_camids, max_rank=1, per_query=True)
        return result["valid"] & (result["first_rank"] == 1)

    def top_k(self, query_index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the k closest kept gallery items of one query, and whether each is a match.

        Same protocol as the metrics (METHOD §5): gallery items with the query's pid and camera
        are dropped; ties keep gallery order.
        """
        if not 0 <= query_index < self.num_queries:
            raise IndexError(f"RetrievalResult {self.name!r}: query index {query_index} out of "
                             f"range 0..{self.num_queries - 1}")
        one = slice(query_index, query_index + 1)
        kept = evaluation.protocol_mask(self.q_pids[one], self.g_pids, self.q_camids[one], self.g_camids)[0]
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
