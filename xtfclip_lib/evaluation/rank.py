"""Retrieval evaluation: distances, the re-ID protocol, CMC / mAP / mINP, masks, re-ranking and
the challenge submission file.

Pure functions of arrays (STYLE §7 "Metrics"): nothing here knows the model or the config.
Arrays may be numpy arrays or torch tensors (CPU or CUDA); results are numpy arrays and floats,
metrics are fractions in [0, 1].

The metrics follow the Market-1501 / MARS protocol (METHOD §5): for each query, gallery items
with the query's identity *and* camera are discarded, a query left with no true match is
skipped, and equal distances keep gallery order (a stable sort, METHOD §6). Every metric needs
only the ranks of the few true matches of each query, so `evaluate` counts those ranks instead
of sorting each gallery row (see `_ranks_by_counting`).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xtfclip_lib.data import ATTRIBUTES, MASKED_ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.utils import atomic_write_text

logger = logging.getLogger(__name__)

DISTANCE_METRICS = ("euclidean", "cosine")
SUBMISSION_HEADER = ("row_id", "query_tracklet", "gallery_tracklets")
SUBMISSION_NAMES_PER_ROW = 10
# The metric names, in the order every table, log and figure shows them: CMC at these ranks
# (R1 = fraction of valid queries whose first true match is at rank 1), then mAP and mINP.
CMC_RANKS: tuple[int, ...] = (1, 5, 10, 20)
METRIC_NAMES: tuple[str, ...] = (*(f"R{k}" for k in CMC_RANKS), "mAP", "mINP")
CASE_COLUMNS = ("case", *METRIC_NAMES, "num_queries")
_CASE_KEYS = ("distmat", "q_pids", "g_pids", "q_camids", "g_camids")

# Memory bounds of `evaluate`: the rows of distmat loaded at once, and the (rows, matches,
# gallery) boolean comparison block of the counting path. The comparison block is kept small
# enough to stay in cache: it is written and read back at once, and a block of a few MB runs
# several times slower than one of 1 MB.
_ROW_CHUNK_BYTES = 16 * 2**20
_COMPARE_BLOCK_BYTES = 2**20
# The comparison booleans are summed as uint64 words, 8 byte lanes at a time; at most 255 words
# per partial sum keep every lane below 256.
_WORDS_PER_SUM = 255
# Counting costs ~G comparisons per true match, a stable sort ~G log G work per row with a much
# larger constant (measured crossover: several hundred matches per query), so queries with more
# true matches than this are ranked by sorting their row instead.
_COUNTING_MAX_MATCHES = 256
# Slots per true match in the hash table that finds gallery items whose distance equals a true
# match's: about 1 item in 1,024 collides and is checked exactly.
_TIE_TABLE_SLOTS_PER_MATCH = 1024


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
    within = np.arange(len(q_idx)) - np.repeat(np.cumsum(counts) - counts, counts)
    return q_idx, order[start[q_idx] + within]


def _padded(row_of: np.ndarray, values: np.ndarray, counts: np.ndarray, fill) -> np.ndarray:
    """(len(counts), max(counts)) array of `values` grouped by `row_of` (ascending), padded."""
    width = int(counts.max()) if len(counts) else 0
    out = np.full((len(counts), width), fill, dtype=values.dtype)
    within = np.arange(len(values)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[row_of, within] = values
    return out


# --------------------------------------------------------------------------------------------
# Ranks of the true matches

def _hash(bits: np.ndarray, num_bits: int) -> np.ndarray:
    """Multiplicative hash of float bit patterns into [0, 2**num_bits). The even multiplier
    drops the sign bit, so -0.0 and +0.0 (equal distances) hash alike."""
    width = bits.dtype.itemsize * 8
    h = np.multiply(bits, bits.dtype.type(0x3C6EF362 if width == 32 else 0x3C6EF372FE94F82A),
                    dtype=bits.dtype)
    h >>= bits.dtype.type(width - num_bits)
    return h


def _tie_candidates(d_bits: np.ndarray, match_bits: np.ndarray) -> np.ndarray:
    """Flat indices into d_bits (s, G) of the items whose bit pattern hashes like one of
    `match_bits`: every item equal to a true match, and a few others."""
    num_bits = max(10, int(np.ceil(np.log2(_TIE_TABLE_SLOTS_PER_MATCH * max(len(match_bits), 1)))))
    table = np.zeros(1 << num_bits, dtype=bool)
    table[_hash(match_bits, num_bits)] = True
    return np.flatnonzero(np.take(table, _hash(d_bits, num_bits)))


def _tie_counts(d: np.ndarray, thresholds: np.ndarray, cols: np.ndarray, ok: np.ndarray,
                candidates: np.ndarray) -> np.ndarray:
    """(c, M) number of gallery items k with d[r, k] == thresholds[r, m] and k < cols[r, m],
    checked exactly on the candidate items (flat indices into d) only."""
    c, G = d.shape
    M = thresholds.shape[1]
    ties = np.zeros(c * M, dtype=np.int64)
    batch = max(1, 2**22 // max(M, 1))
    for start in range(0, len(candidates), batch):
        r, k = np.divmod(candidates[start:start + batch], G)
        equal = (thresholds[r] == d[r, k][:, None]) & (cols[r] > k[:, None]) & ok[r]
        hit_row, hit_m = np.nonzero(equal)
        ties += np.bincount(r[hit_row] * M + hit_m, minlength=c * M)
    return ties.reshape(c, M)


def _count_true(block: np.ndarray, words_per_sum: int) -> np.ndarray:
    """(s, m) number of True in each row of a (s, m, width) bool block, width a multiple of
    8 * words_per_sum: sums uint64 words (8 booleans each) in groups of `words_per_sum` <= 255,
    then the byte lanes, several times faster than a byte-wise sum."""
    s, m, width = block.shape
    words = block.view(np.uint64).reshape(s, m, width // (8 * words_per_sum), words_per_sum)
    lanes = words.sum(axis=3, dtype=np.uint64)                               # no lane exceeds 255
    return lanes.view(np.uint8).reshape(s, m, -1).sum(axis=2, dtype=np.int64)


def _ranks_by_counting(d: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(c, M) 1-based ranks of the true matches among the kept gallery items, unsorted, and
    arbitrary in the pads beyond each row's count.

    d: (c, G) distances with discarded items set to NaN (NaN is neither < nor == anything, so
    they never count). cols: (c, M) gallery index of each true match; counts: (c,) true matches
    per row, ascending. The rank of match m is 1 + #{k : d[k] < d[m]} + #{k < m : d[k] == d[m]},
    its position in a stable sort (METHOD §5-§6). Cost: (c, M, G) comparisons, no sorting; they
    run in blocks of `_COMPARE_BLOCK_BYTES` that stay in cache, and the search for equal
    distances (a hash of each item's bits) runs on the same rows while they are in cache.
    """
    c, G = d.shape
    M = cols.shape[1]
    ok = np.arange(M)[None, :] < counts[:, None]
    thresholds = np.take_along_axis(d, cols, axis=1)                         # (c, M)
    uint = np.uint32 if d.dtype.itemsize == 4 else np.uint64
    d_bits, match_bits = d.view(uint), thresholds.view(uint)
    words_per_sum = min(_WORDS_PER_SUM, -(-G // 8))
    width = -(-G // (8 * words_per_sum)) * 8 * words_per_sum
    step = max(1, _COMPARE_BLOCK_BYTES // (max(M, 1) * width))
    buffer = np.empty(step * M * width, dtype=bool)
    ranks = np.ones((c, M), dtype=np.int64)
    candidates = []
    for start in range(0, c, step):
        stop = min(start + step, c)
        m = int(counts[stop - 1])                     # counts ascend
        block = buffer[:(stop - start) * m * width].reshape(stop - start, m, width)
        np.less(d[start:stop, None, :], thresholds[start:stop, :m, None], out=block[:, :, :G])
        block[:, :, G:] = False
        ranks[start:stop, :m] += _count_true(block, words_per_sum)
        candidates.append(start * G + _tie_candidates(d_bits[start:stop],
                                                      match_bits[start:stop][ok[start:stop]]))
    return ranks + _tie_counts(d, thresholds, cols, ok, np.concatenate(candidates))


def _ranks_by_sorting(d: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Same as `_ranks_by_counting` (pads included) through a stable sort of each row: cheaper
    for queries with hundreds of true matches."""
    c, G = d.shape
    order = np.argsort(d, axis=1, kind="stable")          # NaN (discarded) sorts last
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(G)[None, :].repeat(c, axis=0), axis=1)
    return np.take_along_axis(position, cols, axis=1) + 1


def _query_blocks(num_matches: np.ndarray, G: int, itemsize: int):
    """Yield (query indices, use sorting) blocks covering every query with a true match.

    Queries are taken in order of their number of true matches, so that each block's padded
    (rows, matches) layout stays dense; a block's rows stay under `_ROW_CHUNK_BYTES`, the sorting
    path's index arrays under a quarter of it.
    """
    order = np.flatnonzero(num_matches)
    order = order[np.argsort(num_matches[order], kind="stable")]
    split = np.searchsorted(num_matches[order], _COUNTING_MAX_MATCHES, side="right")
    max_rows = max(1, _ROW_CHUNK_BYTES // max(1, G * itemsize))
    pos = 0
    while pos < split:
        yield order[pos:min(pos + max_rows, split)], False
        pos += max_rows
    rows = max(1, min(max_rows, _ROW_CHUNK_BYTES // (4 * G * 24)))
    for pos in range(split, len(order), rows):
        yield order[pos:pos + rows], True


def _gather_groups(values: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                   groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local group index, value) of every entry of the given groups of a grouped flat array."""
    local = np.repeat(np.arange(len(groups)), counts)
    within = np.arange(len(local)) - np.repeat(np.cumsum(counts) - counts, counts)
    return local, values[np.repeat(starts[groups], counts) + within]


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

    first = first_rank[valid]
    hist = np.bincount(np.minimum(first, max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hist)[1:max_rank + 1] / len(first)
    result = {"cmc": cmc, "mAP": float(ap[valid].mean()), "mINP": float(inp[valid].mean()),
              "num_valid_queries": int(valid.sum())}
    if per_query:
        result.update(valid=valid, ap=ap, inp=inp, first_rank=first_rank, num_matches=num_matches)
    return result


# --------------------------------------------------------------------------------------------
# Cases and the summary table

def _summary_row(name: str, first_rank: np.ndarray, ap: np.ndarray, inp: np.ndarray) -> dict:
    row = {"case": name}
    row.update({f"R{k}": float((first_rank <= k).mean()) for k in CMC_RANKS})
    row.update(mAP=float(ap.mean()), mINP=float(inp.mean()), num_queries=int(len(first_rank)))
    return row


def evaluate_cases(cases: Mapping[str, Any], max_rank: int = 50) -> pd.DataFrame:
    """One row per retrieval case (e.g. "aerial_to_ground", "ground_to_aerial") and, when there is
    more than one case, an "overall" row pooling every case's valid queries (METHOD §5:
    AG-VPReID reports each case and overall).

    Args:
        cases: name -> the arguments of `evaluate`, either a mapping with keys distmat, q_pids,
            g_pids, q_camids, g_camids or a tuple in that order.
        max_rank: passed to `evaluate` (the table reads ranks up to 20 from per-query ranks).

    Returns:
        DataFrame with columns case, R1, R5, R10, R20, mAP, mINP (fractions) and num_queries
        (valid queries scored). Overall metrics are means over the pooled queries, so a case
        with more queries weighs more.
    """
    if not cases:
        raise ValueError("cases is empty; expected at least one name -> (distmat, q_pids, g_pids, "
                         "q_camids, g_camids)")
    if "overall" in cases:
        raise ValueError("'overall' is reserved for the pooled row; rename that case")
    per_case = {}
    for name, case in cases.items():
        if isinstance(case, Mapping):
            missing = [k for k in _CASE_KEYS if k not in case]
            if missing:
                raise KeyError(f"case {name!r} lacks {missing}; expected keys {list(_CASE_KEYS)}")
            args = [case[k] for k in _CASE_KEYS]
        else:
            args = list(case)
            if len(args) != len(_CASE_KEYS):
                raise ValueError(f"case {name!r} has {len(args)} items; expected "
                                 f"({', '.join(_CASE_KEYS)})")
        try:
            res = evaluate(*args, max_rank=max_rank, per_query=True)
        except ValueError as err:
            raise ValueError(f"case {name!r}: {err}") from err
        v = res["valid"]
        per_case[name] = (res["first_rank"][v], res["ap"][v], res["inp"][v])
    return summary_table(per_case)


def summary_table(per_case: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """The per-case table of `evaluate_cases` from per-query results already computed.

    `per_case` maps a case name to the ``(first_rank, ap, inp)`` arrays of its *valid* queries
    (``evaluate(..., per_query=True)`` masked by ``valid``). One row per case and, when there is
    more than one, an "overall" row pooling every case's queries.
    """
    rows = [_summary_row(name, *per) for name, per in per_case.items()]
    if len(per_case) > 1:
        rows.append(_summary_row("overall", *(np.concatenate(p) for p in zip(*per_case.values()))))
    return pd.DataFrame(rows, columns=list(CASE_COLUMNS))


# --------------------------------------------------------------------------------------------
# Distances, flip TTA and the soft-biometric mask

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


# --------------------------------------------------------------------------------------------
# Top-k ranking, k-reciprocal re-ranking

def _topk_stable(d: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of the k smallest entries of each row of d (N, G), ordered as a stable sort
    would order them (equal values by column index). argpartition finds the k-th value; the
    entries below it and the first entries equal to it (by column) form the top k."""
    n_rows, G = d.shape
    kth = np.take_along_axis(d, np.argpartition(d, k - 1, axis=1)[:, k - 1:k], axis=1)  # (N, 1)
    below = d < kth
    equal = d == kth
    room = k - below.sum(axis=1, keepdims=True)
    take = below | (equal & (np.cumsum(equal, axis=1) <= room))
    cols = np.nonzero(take)[1].reshape(n_rows, k)                    # column order
    order = np.argsort(np.take_along_axis(d, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _topk_stable_rows(d: np.ndarray, k: int) -> np.ndarray:
    """`_topk_stable` in row blocks, bounding its (rows, G) temporaries."""
    step = max(1, _ROW_CHUNK_BYTES // (d.shape[1] * 16))
    return np.concatenate([_topk_stable(d[s:s + step], k) for s in range(0, len(d), step)])


def rank_gallery(distmat: Any, k: int = 10) -> np.ndarray:
    """(Q, k) int64 indices of the k closest gallery items of each query, closest first, equal
    distances in gallery order (METHOD §6), via argpartition rather than a full sort."""
    distmat, dtype = _distmat(distmat)
    Q, G = distmat.shape
    if not 1 <= k <= G:
        raise ValueError(f"k={k} but the gallery has {G} items; expected 1 <= k <= {G}")
    step = max(1, _ROW_CHUNK_BYTES // (G * 16))
    top = [np.zeros((0, k), dtype=np.int64)]
    for start in range(0, Q, step):
        rows = np.arange(start, min(start + step, Q))
        d = _rows(distmat, rows, dtype)
        _raise_if_nan(d, rows)
        top.append(_topk_stable(d, k))
    return np.concatenate(top)


def re_rank(q_g_dist: Any, q_q_dist: Any, g_g_dist: Any, k1: int = 20, k2: int = 6,
            lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) -> (Q, G) float32 distances.

    On the N = Q + G samples, with each row of the joint distance matrix divided by its maximum:
      N(p, k): the k + 1 nearest samples of p (p itself, at distance 0, included);
      R(p, k) = {g in N(p, k) : p in N(g, k)}, the k-reciprocal neighbours;
      R*(p) = R(p, k1) plus R(q, round(k1/2)) for every q in R(p, k1) with
              |R(p, k1) & R(q, round(k1/2))| > 2/3 |R(q, round(k1/2))| (the expansion rule;
              strictly greater, as in the authors' released code and in torchreid's and
              fast-reid's copies of it, so re-ranked numbers compare across codebases);
      V_p[g] = exp(-d(p, g)) on R*(p), normalised to sum 1 (Gaussian-kernel weights);
      local query expansion: V_p <- mean of V_g over g in N(p, k2 - 1) (k2 nearest, p included);
      Jaccard distance d_J(p, g) = 1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j]);
      result = (1 - lambda) d_J + lambda d (the row-normalised original distance).
    V is kept sparse (about k1 non-zeros per row) and the Jaccard sums run over the columns that
    a query and a gallery item share, so memory is O(N^2) only for the joint distance matrix.
    """
    qg = _to_numpy(q_g_dist).astype(np.float32)
    qq = _to_numpy(q_q_dist).astype(np.float32)
    gg = _to_numpy(g_g_dist).astype(np.float32)
    if qg.ndim != 2 or qq.shape != (qg.shape[0],) * 2 or gg.shape != (qg.shape[1],) * 2:
        raise ValueError(f"q_g_dist {qg.shape}, q_q_dist {qq.shape}, g_g_dist {gg.shape}; expected "
                         "(Q, G), (Q, Q) and (G, G)")
    if not (isinstance(k1, (int, np.integer)) and isinstance(k2, (int, np.integer))
            and k1 >= 1 and k2 >= 1):
        raise ValueError(f"k1={k1!r}, k2={k2!r}; expected positive integers")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value={lambda_value!r}; expected a number in [0, 1]")
    for name, arr in (("q_g_dist", qg), ("q_q_dist", qq), ("g_g_dist", gg)):
        if np.isnan(arr).any():
            raise ValueError(f"{name} holds NaN; distances must be numbers")
    Q, G = qg.shape
    N = Q + G
    dist = np.block([[qq, qg], [qg.T, gg]])                                  # (N, N)
    row_max = dist.max(axis=1, keepdims=True)
    dist /= np.where(row_max > 0, row_max, 1.0)
    k1, k2 = min(k1, N - 1), min(k2, N)
    k_half = max(1, int(round(k1 / 2)))
    neighbours = _topk_stable_rows(dist, max(k1 + 1, k2))                   # (N, >= k1 + 1)
    nn1 = neighbours[:, :k1 + 1]
    nnh = neighbours[:, :k_half + 1]
    me = np.arange(N)[:, None, None]
    recip1 = (nn1[nn1] == me).any(axis=2)                                     # (N, k1 + 1)
    reciph = (nnh[nnh] == me).any(axis=2)                                     # (N, k_half + 1)

    # Expansion: candidate q = nn1[p, a] (reciprocal), its half-size set nnh[q][reciph[q]].
    keys = [np.repeat(np.arange(N), recip1.sum(1)) * N + nn1[recip1]]
    step = max(1, 2**22 // ((k1 + 1) ** 2 * (k_half + 1)))
    for s in range(0, N, step):
        p = np.arange(s, min(s + step, N))
        half = nnh[nn1[p]]                                                     # (c, K1, Kh)
        half_ok = reciph[nn1[p]] & recip1[p][:, :, None]
        in_r1 = ((half[..., None] == nn1[p][:, None, None, :])
                 & recip1[p][:, None, None, :]).any(axis=3)                   # (c, K1, Kh)
        overlap = (in_r1 & half_ok).sum(axis=2)
        size = half_ok.sum(axis=2)
        accept = recip1[p] & (3 * overlap > 2 * size)      # strictly more than 2/3 (see above)
        add = half_ok & accept[:, :, None]
        keys.append(np.broadcast_to(p[:, None, None], add.shape)[add] * N + half[add])
    keys = np.unique(np.concatenate(keys))
    rows, cols = np.divmod(keys, N)
    weights = np.exp(-dist[rows, cols].astype(np.float64))
    weights /= np.bincount(rows, weights=weights, minlength=N)[rows]

    if k2 > 1:   # local query expansion over the k2 nearest samples (p itself included)
        starts = np.searchsorted(rows, np.arange(N + 1))
        lengths = np.diff(starts)
        src = neighbours[:, :k2].reshape(-1)                                   # (N * k2,)
        counts = lengths[src]
        entry = np.repeat(starts[src], counts) + np.arange(counts.sum()) \
            - np.repeat(np.cumsum(counts) - counts, counts)
        qe_keys = np.repeat(np.repeat(np.arange(N), k2), counts) * N + cols[entry]
        keys, inverse = np.unique(qe_keys, return_inverse=True)
        weights = np.bincount(inverse, weights=weights[entry]) / k2
        rows, cols = np.divmod(keys, N)

    row_sum = np.bincount(rows, weights=weights, minlength=N)
    shared = _shared_mass(rows, cols, weights, Q, G)                           # (Q, G)
    jaccard = 1.0 - shared / (row_sum[:Q, None] + row_sum[None, Q:] - shared)
    final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:Q, Q:]
    return final.astype(np.float32)


def _shared_mass(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, Q: int,
                 G: int) -> np.ndarray:
    """(Q, G) sum_j min(V[p, j], V[Q + g, j]) for a sparse V given as (rows, cols, weights):
    each query entry meets the gallery entries of the same column."""
    is_query = rows < Q
    g_order = np.argsort(cols[~is_query], kind="stable")
    g_rows = rows[~is_query][g_order] - Q
    g_cols = cols[~is_query][g_order]
    g_w = weights[~is_query][g_order]
    num_cols = int(cols.max()) + 1 if len(cols) else 0
    g_start = np.searchsorted(g_cols, np.arange(num_cols + 1))
    q_rows, q_cols, q_w = rows[is_query], cols[is_query], weights[is_query]
    meets = np.diff(g_start)[q_cols]                                            # per query entry
    shared = np.zeros(Q * G)
    ends = np.cumsum(meets)
    total = int(ends[-1]) if len(ends) else 0
    cuts = np.searchsorted(ends, np.arange(2**22, total, 2**22), side="right")
    bounds = np.concatenate([[0], cuts, [len(meets)]])
    for lo, hi in zip(bounds[:-1], bounds[1:]):       # batches of ~4M (query, gallery) meetings
        m = meets[lo:hi]
        entry = np.repeat(np.arange(lo, hi), m)
        g_idx = np.repeat(g_start[q_cols[lo:hi]], m) + np.arange(m.sum()) \
            - np.repeat(np.cumsum(m) - m, m)
        shared += np.bincount(q_rows[entry] * G + g_rows[g_idx],
                              weights=np.minimum(q_w[entry], g_w[g_idx]), minlength=Q * G)
    return shared.reshape(Q, G)


# --------------------------------------------------------------------------------------------
# The challenge submission file

def ranking_from_indices(query_names: Sequence[str], gallery_names: Sequence[str],
                         top_indices: Any) -> list[tuple[str, list[str]]]:
    """The ranking structure of `write_submission` from `rank_gallery`'s (Q, k) indices."""
    top_indices = _to_numpy(top_indices)
    if len(query_names) != len(top_indices):
        raise ValueError(f"{len(query_names)} query names but top_indices has shape "
                         f"{tuple(top_indices.shape)}; expected one row per query")
    names = np.asarray(gallery_names, dtype=object)
    return [(str(q), [str(n) for n in names[row]]) for q, row in zip(query_names, top_indices)]


def _name_problem(name: Any, what: str) -> str | None:
    """Why `name` cannot be a tracklet name of the submission file, or None when it can."""
    if not isinstance(name, str) or not name or re.search(r"\s", name):
        return (f"{what} {name!r} must be a non-empty string without whitespace (gallery names "
                "are space-separated)")
    return None


def submission_row_problem(query: Any, gallery: Sequence[Any], seen: Mapping[str, int]) -> str | None:
    """The one rule of a submission row (METHOD §5), shared by `write_submission` and
    `read_submission`: what is wrong with it, or None.

    A row is valid when the query name and each of exactly ``SUBMISSION_NAMES_PER_ROW`` gallery
    names is a non-empty string without whitespace (the gallery column is space-separated, so a
    space or tab inside a name would change the names read back), and the query is not in
    `seen` (query name -> row_id of its earlier row): a query is ranked once. Callers add where
    the row is (a ranking index, a file line) to the message.
    """
    problem = _name_problem(query, "query name")
    if problem:
        return problem
    if query in seen:
        return f"query {query!r} appears a second time (first in row_id {seen[query]})"
    for name in gallery:
        problem = _name_problem(name, f"gallery name of query {query!r}")
        if problem:
            return problem
    if len(gallery) != SUBMISSION_NAMES_PER_ROW:
        return (f"query {query!r} has {len(gallery)} gallery names; expected "
                f"{SUBMISSION_NAMES_PER_ROW} separated by single spaces")
    return None


def write_submission(path: str | os.PathLike, case1_ranking: Sequence[tuple[str, Sequence[str]]],
                     case2_ranking: Sequence[tuple[str, Sequence[str]]]) -> Path:
    """Write the challenge CSV (METHOD §5) atomically (temporary file, then rename).

    Each ranking is a sequence of (query_tracklet_name, gallery names closest first), e.g. from
    `ranking_from_indices(names, gallery_names, rank_gallery(distmat))`; the first 10 gallery
    names of each query are written. Header ``row_id,query_tracklet,gallery_tracklets``, row_id
    from 1, case 1 (aerial -> ground) rows first, then case 2.
    """
    path = Path(path)
    rows = []
    seen: dict[str, int] = {}
    for case, ranking in (("case1_ranking", case1_ranking), ("case2_ranking", case2_ranking)):
        for i, item in enumerate(ranking):
            try:
                query, gallery = item
            except (TypeError, ValueError):
                raise ValueError(f"{case}[{i}] is {item!r}; expected "
                                 "(query name, gallery names)") from None
            where = f"{case}[{i}] (query {query!r})"
            gallery = list(gallery)
            if len(gallery) < SUBMISSION_NAMES_PER_ROW:
                raise ValueError(f"{where} has {len(gallery)} gallery names; expected at least "
                                 f"{SUBMISSION_NAMES_PER_ROW}")
            top = gallery[:SUBMISSION_NAMES_PER_ROW]
            problem = submission_row_problem(query, top, seen)
            if problem:
                raise ValueError(f"{where}: {problem}")
            seen[query] = len(rows) + 1
            rows.append((len(rows) + 1, query, " ".join(top)))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(SUBMISSION_HEADER)
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
    logger.info("wrote %d submission rows (%d case 1, %d case 2) to %s", len(rows),
                len(case1_ranking), len(case2_ranking), path)
    return path


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a submission CSV: columns row_id (int), query_tracklet (str) and
    gallery_tracklets (list of 10 names).

    Every row must pass `submission_row_problem`, the rule `write_submission` enforces, so a file
    this accepts is one the writer could have written. A problem is a one-line ValueError naming
    the file, the line and what is wrong; the file must be UTF-8 (a byte-order mark is allowed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}); a submission file is UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != SUBMISSION_HEADER:
        raise ValueError(f"{path}:1: header {header}; expected {','.join(SUBMISSION_HEADER)}")
    records = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if len(row) != 3:
            raise ValueError(f"{path}:{line}: {len(row)} fields; expected 3")
        if row[0] != str(len(records) + 1):
            raise ValueError(f"{path}:{line}: row_id {row[0]!r}; expected {len(records) + 1}")
        names = row[2].split(" ")
        problem = submission_row_problem(row[1], names, seen)
        if problem:
            raise ValueError(f"{path}:{line}: {problem}")
        seen[row[1]] = len(records) + 1
        records.append((int(row[0]), row[1], names))
    return pd.DataFrame(records, columns=list(SUBMISSION_HEADER))
