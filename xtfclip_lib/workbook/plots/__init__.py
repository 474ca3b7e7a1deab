"""Figures for the notebook workbook: data exploration, training, retrieval, embeddings and ablations.

Every function builds a `matplotlib.figure.Figure` directly (not through `pyplot`), so it works
under any backend (Agg in tests and papermill, inline in Jupyter), leaves no global figure state
behind, and is shown exactly once when a notebook cell returns it. Each returns the Figure and,
given `path`, also writes it there as a PNG (parent folders are created).

Images come in as frame file paths and are read with PIL, so nothing here depends on the model:
the retrieval figures take a distance matrix and the tracklets' frame paths (`RetrievalResult`).
Metric values are fractions in [0, 1] (STYLE §7); axes show them as percentages.

One module per kind of figure (``data``, ``training``, ``retrieval``, ``embeddings``,
``ablations``) on the shared helpers of ``common``; the notebooks call them all from here,
e.g. ``plots.ranked_gallery(...)``.
"""
from __future__ import annotations

from xtfclip_lib.workbook.plots.ablations import ablation_plot
from xtfclip_lib.workbook.plots.common import (MATCH_COLOR, MISMATCH_COLOR, PLATFORM_COLORS, PLATFORM_MARKERS,
                                               STRIP_GAP_PX, STRIP_HEIGHT_PX, evenly_spaced, frame_strip,
                                               load_frame, save_figure)
from xtfclip_lib.workbook.plots.data import attribute_grid, identity_montage, tracklet_length_histogram
from xtfclip_lib.workbook.plots.embeddings import embed_2d, embedding_plot, robust_limits
from xtfclip_lib.workbook.plots.retrieval import (RetrievalResult, cmc_curves, query_browser, ranked_gallery,
                                                  retrieval_results, select_queries)
from xtfclip_lib.workbook.plots.training import pretraining_summary, training_curves, training_diagnostics

__all__ = ["ablation_plot",
           "MATCH_COLOR", "MISMATCH_COLOR", "PLATFORM_COLORS", "PLATFORM_MARKERS", "STRIP_GAP_PX",
           "STRIP_HEIGHT_PX", "evenly_spaced", "frame_strip", "load_frame", "save_figure",
           "attribute_grid", "identity_montage", "tracklet_length_histogram",
           "embed_2d", "embedding_plot", "robust_limits",
           "RetrievalResult", "cmc_curves", "query_browser", "ranked_gallery", "retrieval_results",
           "select_queries",
           "pretraining_summary", "training_curves", "training_diagnostics"]
