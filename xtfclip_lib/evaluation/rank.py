"""The re-ID protocol and `evaluate`: CMC, mAP and mINP of a distance matrix.

Pure functions of arrays (STYLE §7 "Metrics"): nothing here knows the model or the config.
Arrays may be numpy arrays or torch tensors (CPU or CUDA); results are numpy arrays and floats,
metrics are fractions in [0, 1]. This module also holds the input handling the other modules
of the part share (`_to_numpy`, `_distmat`, `_rows`, the NaN checks).

The metrics follow the Market-1501 / MARS protocol (METHOD §5): for each query, gallery items
with the query's identity *and* camera are discarded (`_discarded`, the one place that rule is
coded), a query left with no true match is skipped, and equal distances keep gallery order (a
stable sort, METHOD §6). Every metric needs only the ranks of the few true matches of each
query, so `evaluate` counts those ranks instead of sorting each gallery row (`ranking`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xtfclip_lib.evaluation.ranking import (_ROW_CHUNK_BYTES, _gather_groups, _padded,
                                            _query_blocks, _ranks_by_counting, _ranks_by_sorting,
                                            _within_groups)


# --------------------------------------------------------------------------------------------
# Input handling

def _to_numpy(x: Any) -> np.ndarray:
    """Numpy view or copy of an array-like or torch tensor (any device)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _ids(x: Any, name: str, length: int, length_of: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 1 or len(arr) != length:
        raise ValueError(f"{name} has shape {tuple(arr.shape)} but distmat has shape {length_of}; "
                         f"expected {name} of shape ({length},)")
    return arr


def _working_dtype(dtype: Any) -> np.dtype:
    """float64 for float64 and integer distances (exact), float32 for narrower floats."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.bool or dtype.is_complex:
            raise ValueError(f"distmat has dtype {dtype}; expected real numbers")
        return np.dtype(np.float32) if dtype.is_floating_point and dtype != torch.float64 \
            else np.dtype(np.float64)
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise ValueError(f"distmat has dtype {dtype}; expected real numbers")
    narrow_float = dtype.kind == "f" and dtype.itemsize <= 4
    return np.dtype(np.float32) if narrow_float else np.dtype(np.float64)


def _distmat(distmat: Any) -> tuple[Any, np.dtype]:
    """`distmat` as a 2-D numpy array or torch tensor (kept on its device), and the dtype the
    metrics compute in."""
    if not isinstance(distmat, torch.Tensor):
        distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat has shape {tuple(distmat.shape)}; "
                         "expected (num_query, num_gallery)")
    return distmat, _working_dtype(distmat.dtype)


def _rows(distmat: Any, rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(len(rows), G) copy of the given rows of `distmat` as numpy `dtype`."""
    if isinstance(distmat, torch.Tensor):
        block = distmat[torch.as_tensor(rows, device=distmat.device)]
        if block.dtype == torch.bfloat16:
            block = block.float()
        return np.asarray(block.cpu().numpy(), dtype=dtype)
    return np.asarray(distmat[rows], dtype=dtype)


def _raise_if_nan(block: np.ndarray, row_ids: np.ndarray) -> None:
    """Raise a ValueError naming a NaN of `block` (rows `row_ids` of distmat), if it has one."""
    if block.size and block.dtype.kind == "f" and np.isnan(block.min()):   # min propagates NaN
        i, j = np.argwhere(np.isnan(block))[0]
        raise ValueError(f"distmat holds NaN, e.g. at query {row_ids[i]}, gallery {j}; distances "
                         "must be numbers (check the features for NaN)")


def _check_rows_no_nan(distmat: Any, rows: np.ndarray, dtype: np.dtype) -> None:
    """`_raise_if_nan` over the given rows of distmat, read in blocks of `_ROW_CHUNK_BYTES`."""
    step = max(1, _ROW_CHUNK_BYTES // max(1, distmat.shape[1] * dtype.itemsize))
    for start in range(0, len(rows), step):
        ids = rows[start:start + step]
        _raise_if_nan(_rows(distmat, ids, dtype), ids)


# --------------------------------------------------------------------------------------------
# The protocol

def _discarded(q_pids, g_pids, q_camids, g_camids):
    """True where a gallery item is dropped for a query: same identity *and* same camera
    (METHOD §5). Broadcasts, so it serves the dense mask and (query, gallery) pair lists alike."""
    return (q_pids == g_pids) & (q_camids == g_camids)


def protocol_mask(q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> np.ndarray:
    """(Q, G) bool: True where gallery item j is kept for query i, False where it shares the
    query's identity and camera (Market-1501 / MARS protocol, METHOD §5).

    `evaluate` applies the same rule (`_discarded`) to the few same-identity pairs only, so that
    it never builds this dense mask; the tests check the two agree.
    """
    q_pids, g_pids = _to_numpy(q_pids), _to_numpy(g_pids)
    q_camids, g_camids = _to_numpy(q_camids), _to_numpy(g_camids)
    if q_pids.shape != q_camids.shape or g_pids.shape != g_camids.shape:
        raise ValueError(f"pids and camids disagree: q_pids {q_pids.shape}, q_camids "
                         f"{q_camids.shape}, g_pids {g_pids.shape}, g_camids {g_camids.shape}")
    return ~_discarded(q_pids[:, None], g_pids[None, :], q_camids[:, None], g_camids[None, :])


def _same_pid_pairs(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (query, gallery) index pairs with equal pids, grouped by query (ascending), gallery
    indices ascending within a query. O(G log G + pairs), no (Q, G) array."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    start = np.searchsorted(sorted_pids, q_pids, side="left")
    counts = np.searchsorted(sorted_pids, q_pids, side="right") - start
    q_idx = np.repeat(np.arange(len(q_pids)), counts)
    return q_idx, order[start[q_idx] + _within_groups(counts)]


# --------------------------------------------------------------------------------------------
# CMC, mAP and mINP

def _score_queries(distmat: Any, dtype: np.dtype, num_matches: np.ndarray, match_g: np.ndarray,
                   junk_q: np.ndarray,
                   junk_g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Q,) first_rank, ap and inp of every query (0, NaN, NaN where it has no true match).

    match_g: gallery index of each true match, grouped by query (`num_matches` per query);
    junk_q, junk_g: the discarded (query, gallery) pairs, grouped by query. Each block of
    `_query_blocks` is read once, checked for NaN, and its true matches ranked with the
    discarded items set to NaN.
    """
    Q, G = distmat.shape
    match_start = np.cumsum(num_matches) - num_matches
    num_junk = np.bincount(junk_q, minlength=Q)
    junk_start = np.cumsum(num_junk) - num_junk
    first_rank = np.zeros(Q, dtype=np.int64)
    ap = np.full(Q, np.nan)
    inp = np.full(Q, np.nan)
    for queries, sort in _query_blocks(num_matches, G, dtype.itemsize):
        counts = num_matches[queries]
        cols = _padded(*_gather_groups(match_g, match_start, counts, queries), counts, 0)
        junk_rows, junk_cols = _gather_groups(junk_g, junk_start, num_junk[queries], queries)
        d = _rows(distmat, queries, dtype)
        _raise_if_nan(d, queries)
        d[junk_rows, junk_cols] = np.nan             # discarded items never count
        ok = np.arange(cols.shape[1])[None, :] < counts[:, None]
        ranks = _ranks_by_sorting(d, cols) if sort else _ranks_by_counting(d, cols, counts)
        ranks = np.sort(np.where(ok, ranks, np.iinfo(np.int64).max), axis=1)   # (c, M)
        position = np.arange(1, ranks.shape[1] + 1)[None, :]
        ap[queries] = np.where(ok, position / np.where(ok, ranks, 1), 0.0).sum(axis=1) / counts
        inp[queries] = counts / ranks[np.arange(len(queries)), counts - 1]
        first_rank[queries] = ranks[:, 0]
    return first_rank, ap, inp


def evaluate(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
             max_rank: int = 50, per_query: bool = False) -> dict:
    """CMC, mAP and mINP of a (Q, G) distance matrix under the Market-1501 / MARS protocol.

    For each query, gallery items with the query's pid *and* camid are discarded; a query with no
    remaining true match is skipped; equal distances keep gallery order (METHOD §5-§6). mINP is
    Ye et al.'s (AGW, TPAMI 2021): mean over queries of (number of true matches) / (rank of the
    hardest one). When fewer than `max_rank` gallery items remain, the curve keeps its last value
    up to `max_rank`, so `cmc` always has `max_rank` entries.

    Rather than sorting each row (as slow as the per-query loop, METHOD §5), the rank of each true
    match is counted exactly: the kept items strictly closer, plus equal-distance kept items
    earlier in the gallery. Queries are processed in blocks grouped by their number of true
    matches, bounding memory by `_ROW_CHUNK_BYTES` and `_COMPARE_BLOCK_BYTES`.

    Args:
        distmat: (Q, G) distances, numpy array or torch tensor (CPU or CUDA); no NaN.
        q_pids, q_camids: (Q,) query identities and cameras; g_pids, g_camids: (G,) gallery ones.
        max_rank: length of the CMC curve.
        per_query: also return per-query arrays over all Q queries: ``valid`` (bool, has a true
            match), ``ap``, ``inp`` (float, NaN where not valid), ``first_rank`` (1-based rank of
            the first true match among the kept items, 0 where not valid) and ``num_matches``.
            Pooling cases or bootstrapping over queries only needs these.

    Returns:
        dict with ``cmc`` ((max_rank,) float64), ``mAP``, ``mINP`` (floats) and
        ``num_valid_queries`` (int), plus the per-query arrays if asked.
    """
    distmat, dtype = _distmat(distmat)
    Q, G = distmat.shape
    shape = (Q, G)
    q_pids = _ids(q_pids, "q_pids", Q, shape)
    q_camids = _ids(q_camids, "q_camids", Q, shape)
    g_pids = _ids(g_pids, "g_pids", G, shape)
    g_camids = _ids(g_camids, "g_camids", G, shape)
    if not isinstance(max_rank, (int, np.integer)) or isinstance(max_rank, bool) or max_rank < 1:
        raise ValueError(f"max_rank={max_rank!r}; expected a positive integer")

    pair_q, pair_g = _same_pid_pairs(q_pids, g_pids)
    junk = _discarded(q_pids[pair_q], g_pids[pair_g], q_camids[pair_q], g_camids[pair_g])
    match_q, match_g = pair_q[~junk], pair_g[~junk]
    junk_q, junk_g = pair_q[junk], pair_g[junk]
    num_matches = np.bincount(match_q, minlength=Q)
    valid = num_matches > 0
    if not valid.any():
        raise ValueError(
            f"none of the {Q} queries has a true match in the gallery of {G} items (a gallery item "
            "with the query's pid from another camera); check that query and gallery pids are "
            "the dataset's own ids (not relabelled separately) and that the cases are paired right")
    _check_rows_no_nan(distmat, np.flatnonzero(~valid), dtype)   # valid rows: checked below

    first_rank, ap, inp = _score_queries(distmat, dtype, num_matches, match_g, junk_q, junk_g)

    first = first_rank[valid]
    hist = np.bincount(np.minimum(first, max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hist)[1:max_rank + 1] / len(first)
    result = {"cmc": cmc, "mAP": float(ap[valid].mean()), "mINP": float(inp[valid].mean()),
              "num_valid_queries": int(valid.sum())}
    if per_query:
        result.update(valid=valid, ap=ap, inp=inp, first_rank=first_rank, num_matches=num_matches)
    return result
