"""Distances between query and gallery features, flip averaging and the soft-biometric mask.

Everything that turns features (and annotated attributes) into the (Q, G) distance matrix that
`evaluate` scores: squared Euclidean or cosine distances computed with torch on the features'
device, flip test-time augmentation (METHOD §6), and the penalty added for known attributes
that differ (METHOD §4, switch 7).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from xtfclip_lib.data import ATTRIBUTES, MASKED_ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.evaluation.rank import _to_numpy

DISTANCE_METRICS = ("euclidean", "cosine")


def compute_distance(qf: Any, gf: Any, metric: str = "euclidean",
                     normalize: bool = True) -> np.ndarray:
    """(Q, D) query and (G, D) gallery features -> (Q, G) float32 distances.

    "euclidean" gives the *squared* Euclidean distance (same ranking as Euclidean, cheaper); on
    L2-normalised features (``normalize=True``, METHOD §5) it equals 2 - 2 cos. "cosine" gives
    1 - cos (always normalised). Computed with torch on the features' device, e.g. Q=2,000 and
    G=10,000 rows of D=2,048 give an 80 MB float32 matrix.
    """
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; "
                         f"valid metrics: {list(DISTANCE_METRICS)}")
    q = torch.as_tensor(qf)
    g = torch.as_tensor(gf).to(q.device)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"qf has shape {tuple(q.shape)} and gf {tuple(g.shape)}; expected "
                         "(num_query, D) and (num_gallery, D) with the same D")
    with torch.no_grad():
        q, g = q.float(), g.float()
        if normalize or metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=1)
            g = torch.nn.functional.normalize(g, dim=1)
        sim = q @ g.T                                                         # (Q, G)
        if metric == "cosine":
            dist = 1.0 - sim
        elif normalize:
            dist = (2.0 - 2.0 * sim).clamp_min_(0.0)
        else:
            squares = (q * q).sum(1, keepdim=True) + (g * g).sum(1)[None, :]
            dist = (squares - 2.0 * sim).clamp_min_(0.0)
    return dist.cpu().numpy().astype(np.float32, copy=False)


def flip_average(feats: Any, feats_flipped: Any) -> Any:
    """Flip test-time augmentation: the mean of each tracklet's features (N, D) and those of its
    horizontally flipped frames (N, D) (X-TFCLIP's published test code, METHOD §6). Returns the
    type it was given (numpy array or torch tensor)."""
    if tuple(feats.shape) != tuple(feats_flipped.shape):
        raise ValueError(f"feats has shape {tuple(feats.shape)} but feats_flipped "
                         f"{tuple(feats_flipped.shape)}; expected the same tracklets in the "
                         "same order")
    return (feats + feats_flipped) / 2


def _attribute_codes(attrs: Any, name: str, side: str) -> np.ndarray:
    """(N,) codes of attribute `name`; NaN (no annotation) becomes that attribute's unknown code."""
    if isinstance(attrs, pd.DataFrame):
        if name not in attrs.columns:
            raise KeyError(f"{side} attributes lack column {name!r}; "
                           f"columns: {list(attrs.columns)}")
        values = pd.to_numeric(attrs[name]).to_numpy(dtype=float, na_value=np.nan)
    else:
        arr = _to_numpy(attrs)
        if arr.ndim != 2 or arr.shape[1] != len(ATTRIBUTES):
            raise ValueError(f"{side} attributes have shape {tuple(arr.shape)}; expected (N, "
                             f"{len(ATTRIBUTES)}) columns in the order {list(ATTRIBUTES)}")
        values = arr[:, ATTRIBUTES.index(name)].astype(float)
    return np.where(np.isnan(values), UNKNOWN_CODE[name], values)


def soft_biometric_mask(query_attrs: Any, gallery_attrs: Any,
                        attributes: Sequence[str] = MASKED_ATTRIBUTES,
                        penalty: float = 100.0) -> np.ndarray:
    """(Q, G) float32 penalty to add to the distance matrix: `penalty` per attribute whose query
    and gallery codes are both known and differ (METHOD §4, switch 7).

    An unknown code (``UNKNOWN_CODE[attribute]``, or a missing value) on either side never adds a
    penalty. Add the result to the distance matrix *before* computing metrics (METHOD §7).

    Args:
        query_attrs, gallery_attrs: one row per tracklet, as DataFrames with the attribute
            columns or (N, 15) arrays in METHOD's column order (`ATTRIBUTES`).
        attributes: which attributes to compare.
        penalty: distance added per mismatching attribute.
    """
    unknown = [a for a in attributes if a not in UNKNOWN_CODE]
    if unknown:
        raise KeyError(f"unknown attributes {unknown}; valid: {list(ATTRIBUTES)}")
    q_len = len(query_attrs)
    g_len = len(gallery_attrs)
    mask = np.zeros((q_len, g_len), dtype=np.float32)
    for name in attributes:
        q = _attribute_codes(query_attrs, name, "query")
        g = _attribute_codes(gallery_attrs, name, "gallery")
        code = UNKNOWN_CODE[name]
        differ = (q[:, None] != g[None, :]) & (q[:, None] != code) & (g[None, :] != code)
        mask += np.float32(penalty) * differ
    return mask
