"""Embedding figures (notebook 05): tracklet features in 2-D by PCA or t-SNE."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from xtfclip_lib.workbook.plots.common import PLATFORM_MARKERS, save_figure


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
