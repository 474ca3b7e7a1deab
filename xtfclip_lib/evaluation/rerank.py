"""Top-k ranking of the gallery and k-reciprocal re-ranking.

`rank_gallery` gives the k closest gallery items of each query (the ranking the submission
file lists) without a full sort; `re_rank` is Zhong et al.'s k-reciprocal re-ranking (CVPR
2017), done in named steps on a sparse neighbour-weight matrix: the joint distances, the
expanded k-reciprocal sets, their Gaussian-kernel weights, local query expansion, and the
Jaccard distance from the weight a query and a gallery item share.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xtfclip_lib.evaluation.rank import _distmat, _raise_if_nan, _rows, _to_numpy
from xtfclip_lib.evaluation.ranking import _ROW_CHUNK_BYTES, _within_groups


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
    qg, qq, gg = _re_rank_inputs(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)
    Q, G = qg.shape
    N = Q + G
    dist = _joint_distance(qg, qq, gg)                                       # (N, N)
    k1, k2 = min(k1, N - 1), min(k2, N)
    neighbours = _topk_stable_rows(dist, max(k1 + 1, k2))                   # (N, >= k1 + 1)
    rows, cols = np.divmod(_expanded_reciprocal_keys(neighbours, k1), N)
    weights = np.exp(-dist[rows, cols].astype(np.float64))
    weights /= np.bincount(rows, weights=weights, minlength=N)[rows]
    if k2 > 1:   # local query expansion over the k2 nearest samples (p itself included)
        rows, cols, weights = _query_expansion(rows, cols, weights, neighbours[:, :k2])
    row_sum = np.bincount(rows, weights=weights, minlength=N)
    shared = _shared_mass(rows, cols, weights, Q, G)                           # (Q, G)
    jaccard = 1.0 - shared / (row_sum[:Q, None] + row_sum[None, Q:] - shared)
    final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:Q, Q:]
    return final.astype(np.float32)


def _re_rank_inputs(q_g_dist: Any, q_q_dist: Any, g_g_dist: Any, k1: int, k2: int,
                    lambda_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three distance matrices of `re_rank` as float32 numpy, its arguments checked."""
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
    return qg, qq, gg


def _joint_distance(qg: np.ndarray, qq: np.ndarray, gg: np.ndarray) -> np.ndarray:
    """(N, N) float32 distances among the Q + G samples, each row divided by its maximum."""
    dist = np.block([[qq, qg], [qg.T, gg]])                                  # (N, N)
    row_max = dist.max(axis=1, keepdims=True)
    dist /= np.where(row_max > 0, row_max, 1.0)
    return dist


def _expanded_reciprocal_keys(neighbours: np.ndarray, k1: int) -> np.ndarray:
    """Sorted keys p * N + g of the pairs with g in R*(p) (`re_rank`'s expansion rule), from the
    (N, >= k1 + 1) stable nearest neighbours of each sample."""
    N = len(neighbours)
    k_half = max(1, int(round(k1 / 2)))
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
        accept = recip1[p] & (3 * overlap > 2 * size)      # strictly more than 2/3 (see re_rank)
        add = half_ok & accept[:, :, None]
        keys.append(np.broadcast_to(p[:, None, None], add.shape)[add] * N + half[add])
    return np.unique(np.concatenate(keys))


def _query_expansion(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                     nearest: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local query expansion of the sparse V (rows ascending): V_p <- the mean of V_g over the
    (N, k2) `nearest` samples g of each p. Returns the new (rows, cols, weights)."""
    N, k2 = nearest.shape
    starts = np.searchsorted(rows, np.arange(N + 1))
    lengths = np.diff(starts)
    src = nearest.reshape(-1)                                                  # (N * k2,)
    counts = lengths[src]
    entry = np.repeat(starts[src], counts) + _within_groups(counts)
    qe_keys = np.repeat(np.repeat(np.arange(N), k2), counts) * N + cols[entry]
    keys, inverse = np.unique(qe_keys, return_inverse=True)
    weights = np.bincount(inverse, weights=weights[entry]) / k2
    rows, cols = np.divmod(keys, N)
    return rows, cols, weights


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
        g_idx = np.repeat(g_start[q_cols[lo:hi]], m) + _within_groups(m)
        shared += np.bincount(q_rows[entry] * G + g_rows[g_idx],
                              weights=np.minimum(q_w[entry], g_w[g_idx]), minlength=Q * G)
    return shared.reshape(Q, G)
