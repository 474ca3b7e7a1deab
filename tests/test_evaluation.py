"""Tests of xtfclip_lib.evaluation: the protocol, exact metrics, masks, re-ranking, submission."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from xtfclip_lib.data.attributes import ATTRIBUTES, MASKED_ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.evaluation import (compute_distance, evaluate, evaluate_cases, flip_average,
                                    protocol_mask, rank_gallery, ranking_from_indices,
                                    re_rank, read_submission, soft_biometric_mask,
                                    write_submission)
from xtfclip_lib.evaluation import ranking
from xtfclip_lib.evaluation.cases import _CASE_KEYS
from xtfclip_lib.evaluation.rerank import _shared_mass


# --------------------------------------------------------------------------------------------
# References: the simple full-sort form (STYLE §7) and a plain per-query loop

def reference_rank_metrics(distmat, q_pids, g_pids, kept, max_rank):
    """Per-query (valid, first_rank, ap, inp) and cmc from a stable sort of every whole row."""
    order = np.argsort(distmat, axis=1, kind="stable")                   # ties keep gallery order
    kept = np.take_along_axis(kept, order, axis=1)
    hits = (g_pids[order] == q_pids[:, None]) & kept                     # (Q, G) in rank order
    position = np.maximum(np.cumsum(kept, axis=1), 1)                    # 1-based rank among kept
    num_rel = hits.sum(axis=1)
    valid = num_rel > 0
    hits, position, num_rel = hits[valid], position[valid], num_rel[valid]
    first = np.where(hits, position, np.iinfo(np.int64).max).min(axis=1)
    last = np.where(hits, position, 0).max(axis=1)
    ap = (np.cumsum(hits, axis=1) / position * hits).sum(axis=1) / num_rel
    cmc = (first[:, None] <= np.arange(1, max_rank + 1)).mean(axis=0)
    return {"valid": valid, "first_rank": first, "ap": ap, "inp": num_rel / last, "cmc": cmc}


def loop_metrics(distmat, q_pids, g_pids, q_camids, g_camids):
    """Per-query (first_rank, ap, inp) of the valid queries, one query at a time."""
    firsts, aps, inps = [], [], []
    for i in range(len(q_pids)):
        keep = ~((g_pids == q_pids[i]) & (g_camids == q_camids[i]))
        order = np.argsort(distmat[i][keep], kind="stable")
        ranks = np.flatnonzero(g_pids[keep][order] == q_pids[i]) + 1
        if len(ranks) == 0:
            continue
        firsts.append(ranks[0])
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inps.append(len(ranks) / ranks[-1])
    return np.array(firsts), np.array(aps), np.array(inps)


def random_case(seed, num_query, num_gallery, num_ids, num_cams, levels=None):
    """Seeded random distances; with `levels`, integers in [0, levels) so that ties abound."""
    rng = np.random.default_rng(seed)
    if levels:
        distmat = rng.integers(0, levels, size=(num_query, num_gallery)).astype(np.float32)
    else:
        distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    return (distmat, rng.integers(0, num_ids, num_query), rng.integers(0, num_ids, num_gallery),
            rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery))


def assert_matches_references(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    dm = np.asarray(distmat, dtype=np.float64)
    res = evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, per_query=True)
    ref = reference_rank_metrics(dm, q_pids, g_pids,
                                 protocol_mask(q_pids, g_pids, q_camids, g_camids), max_rank)
    np.testing.assert_array_equal(res["valid"], ref["valid"])
    v = res["valid"]
    np.testing.assert_array_equal(res["first_rank"][v], ref["first_rank"])
    np.testing.assert_allclose(res["ap"][v], ref["ap"], rtol=1e-12)
    np.testing.assert_allclose(res["inp"][v], ref["inp"], rtol=1e-12)
    np.testing.assert_allclose(res["cmc"], ref["cmc"], rtol=1e-12)
    assert res["mAP"] == pytest.approx(ref["ap"].mean(), rel=1e-12)
    assert res["mINP"] == pytest.approx(ref["inp"].mean(), rel=1e-12)
    first, ap, inp = loop_metrics(dm, q_pids, g_pids, q_camids, g_camids)
    np.testing.assert_array_equal(res["first_rank"][v], first)
    np.testing.assert_allclose(res["ap"][v], ap, rtol=1e-12)
    np.testing.assert_allclose(res["inp"][v], inp, rtol=1e-12)
    return res


# --------------------------------------------------------------------------------------------
# Hand-worked cases

def test_hand_worked_ranks_ap_inp():
    # one query (pid 1, cam 0); true matches at gallery positions 0, 2, 5 of the sorted order
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    g_pids = np.array([1, 2, 1, 3, 4, 1, 5])
    res = evaluate(distmat, [1], g_pids, [0], np.ones(7, int), max_rank=7, per_query=True)
    # ranks 1, 3, 6 -> AP = (1/1 + 2/3 + 3/6) / 3, INP = 3/6
    assert res["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    assert res["mINP"] == pytest.approx(0.5)
    np.testing.assert_array_equal(res["cmc"], np.ones(7))
    assert res["first_rank"].tolist() == [1]
    assert res["num_valid_queries"] == 1


def test_ties_keep_gallery_order():
    # all distances equal: the stable order is the gallery order
    distmat = np.zeros((1, 4), dtype=np.float32)
    res = evaluate(distmat, [7], [3, 7, 3, 7], [0], [1, 1, 1, 1], max_rank=4, per_query=True)
    assert res["first_rank"].tolist() == [2]
    assert res["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_array_equal(res["cmc"], [0, 1, 1, 1])


def test_tie_with_an_earlier_and_a_later_impostor():
    # the match (gallery 2) ties with gallery 1 (before it) and gallery 3 (after it)
    distmat = np.array([[0.0, 0.5, 0.5, 0.5]])
    res = evaluate(distmat, [1], [0, 2, 1, 3], [0], [1, 1, 1, 1], max_rank=3, per_query=True)
    assert res["first_rank"].tolist() == [3]


def test_negative_zero_ties_with_zero():
    distmat = np.array([[0.0, -0.0, 0.0]], dtype=np.float32)
    res = evaluate(distmat, [1], [2, 1, 1], [0], [1, 1, 1], max_rank=3, per_query=True)
    assert res["first_rank"].tolist() == [2]
    assert res["mINP"] == pytest.approx(2 / 3)


def test_query_without_true_match_is_skipped():
    distmat = np.array([[0.1, 0.9], [0.2, 0.3]])
    res = evaluate(distmat, [1, 5], [1, 2], [0, 0], [1, 1], max_rank=2, per_query=True)
    assert res["num_valid_queries"] == 1
    assert res["valid"].tolist() == [True, False]
    assert np.isnan(res["ap"][1]) and res["first_rank"][1] == 0
    assert res["mAP"] == 1.0


def test_same_camera_items_are_removed():
    # gallery 0 shares pid and camera with the query: dropped, so the match at gallery 2 is
    # rank 2 (after gallery 1), not rank 3; gallery 3 is the same pid from another camera.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    res = evaluate(distmat, [4], [4, 9, 4, 9], [0], [0, 1, 1, 0], max_rank=3, per_query=True)
    assert res["first_rank"].tolist() == [2]
    assert res["mAP"] == pytest.approx(0.5)
    # a query whose only same-pid item is in its own camera has no true match
    with pytest.raises(ValueError, match="none of the 1 queries"):
        evaluate(distmat, [4], [4, 9, 5, 9], [0], [0, 1, 1, 0])


def test_all_correct_and_all_wrong():
    g_pids = np.array([0, 0, 1, 1, 2, 2])
    g_cams = np.ones(6, int)
    q_pids, q_cams = np.array([0, 1, 2]), np.zeros(3, int)
    good = np.where(q_pids[:, None] == g_pids[None, :], 0.1, 0.9)
    res = evaluate(good, q_pids, g_pids, q_cams, g_cams, max_rank=6)
    assert res["mAP"] == 1.0 and res["mINP"] == 1.0
    np.testing.assert_array_equal(res["cmc"], np.ones(6))
    bad = 1.0 - good      # every true match behind the four impostors: ranks 5 and 6
    res = evaluate(bad, q_pids, g_pids, q_cams, g_cams, max_rank=6)
    np.testing.assert_array_equal(res["cmc"], [0, 0, 0, 0, 1, 1])
    assert res["mAP"] == pytest.approx((1 / 5 + 2 / 6) / 2)
    assert res["mINP"] == pytest.approx(2 / 6)


def test_gallery_smaller_than_max_rank_pads_the_curve():
    distmat = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]])
    res = evaluate(distmat, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], max_rank=10)
    assert res["cmc"].shape == (10,)
    # query 0: match ranked 3rd; query 1: match ranked 2nd
    np.testing.assert_allclose(res["cmc"], [0, 0.5] + [1.0] * 8)


def test_protocol_mask():
    kept = protocol_mask([1, 2], [1, 1, 2, 3], [0, 1], [0, 1, 1, 1])
    np.testing.assert_array_equal(kept, [[False, True, True, True], [True, True, False, True]])


# --------------------------------------------------------------------------------------------
# Agreement with the references on random matrices

@pytest.mark.parametrize("seed,levels", [(0, 5), (1, 3), (2, None), (3, 40)])
def test_random_matrices_match_references(seed, levels):
    assert_matches_references(*random_case(seed, 60, 300, 25, 4, levels=levels))


def test_small_blocks_and_the_sorting_path_match_references(monkeypatch):
    # tiny memory budgets force many blocks; a low threshold sends the queries with the most
    # true matches to the sorting path, so that one call exercises both paths side by side
    monkeypatch.setattr(ranking, "_COMPARE_BLOCK_BYTES", 2000)
    monkeypatch.setattr(ranking, "_ROW_CHUNK_BYTES", 4000)
    monkeypatch.setattr(ranking, "_COUNTING_MAX_MATCHES", 6)
    assert_matches_references(*random_case(4, 50, 200, 15, 3, levels=6))


def test_hash_collisions_are_checked_exactly(monkeypatch):
    # a constant hash makes every item a tie candidate; the exact check must sort them out
    monkeypatch.setattr(ranking, "_hash", lambda bits, num_bits: np.zeros(bits.shape, np.intp))
    assert_matches_references(*random_case(5, 30, 150, 10, 3, levels=8))
    assert_matches_references(*random_case(6, 30, 150, 10, 3))


def test_many_true_matches_take_the_sorting_path():
    distmat, q_pids, g_pids, q_cams, g_cams = random_case(7, 6, 700, 2, 2, levels=50)
    assert (g_pids == q_pids[0]).sum() > ranking._COUNTING_MAX_MATCHES
    assert_matches_references(distmat, q_pids, g_pids, q_cams, g_cams)


def test_input_types_agree():
    distmat, *ids = random_case(8, 20, 80, 8, 3, levels=7)
    expected = evaluate(distmat, *ids, per_query=True)
    for variant in (distmat.astype(np.float64), distmat.astype(np.int64),
                    distmat.astype(np.float16), torch.from_numpy(distmat),
                    torch.from_numpy(distmat).to(torch.bfloat16)):
        got = evaluate(variant, *[torch.as_tensor(x) for x in ids], per_query=True)
        np.testing.assert_array_equal(got["first_rank"], expected["first_rank"])
        np.testing.assert_allclose(got["ap"], expected["ap"], rtol=1e-12)


def test_infinite_distances():
    distmat = np.array([[np.inf, 0.5, np.inf, -np.inf]])
    res = evaluate(distmat, [1], [1, 2, 1, 3], [0], [1, 1, 1, 1], max_rank=4, per_query=True)
    # sorted: -inf (3), 0.5 (1), inf (0, match), inf (2, match)
    assert res["first_rank"].tolist() == [3]
    assert res["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)


# --------------------------------------------------------------------------------------------
# Errors

def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"g_pids has shape \(3,\) but distmat has shape \(2, 4\)"):
        evaluate(np.zeros((2, 4)), [0, 1], [0, 1, 2], [0, 0], [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"q_camids has shape \(3,\)"):
        evaluate(np.zeros((2, 4)), [0, 1], [0, 1, 2, 3], [0, 0, 0], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="distmat has shape"):
        evaluate(np.zeros(4), [0], [0], [0], [0])


def test_no_valid_query_and_nan_and_max_rank():
    with pytest.raises(ValueError, match="none of the 2 queries has a true match"):
        evaluate(np.zeros((2, 3)), [0, 1], [5, 6, 7], [0, 0], [1, 1, 1])
    distmat = np.zeros((2, 3))
    distmat[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN, e.g. at query 1, gallery 2"):
        evaluate(distmat, [0, 1], [0, 1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(torch.from_numpy(distmat), [0, 1], [0, 1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN, e.g. at query 1, gallery 2"):   # invalid query
        evaluate(distmat, [0, 7], [0, 1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="max_rank=0"):
        evaluate(np.zeros((1, 1)), [0], [0], [0], [1], max_rank=0)


# --------------------------------------------------------------------------------------------
# Cases table

def test_evaluate_cases_pools_queries():
    case1 = random_case(10, 30, 120, 12, 4, levels=9)
    case2 = random_case(11, 50, 100, 12, 4)
    table = evaluate_cases({"aerial_to_ground": case1,
                            "ground_to_aerial": dict(zip(_CASE_KEYS, case2))})
    assert list(table.columns) == ["case", "R1", "R5", "R10", "R20", "mAP", "mINP", "num_queries"]
    assert table["case"].tolist() == ["aerial_to_ground", "ground_to_aerial", "overall"]
    r1, r2 = (evaluate(*c, per_query=True) for c in (case1, case2))
    for row, res in zip(table.itertuples(), (r1, r2)):
        assert row.R1 == pytest.approx(res["cmc"][0])
        assert row.R20 == pytest.approx(res["cmc"][19])
        assert row.mAP == pytest.approx(res["mAP"])
        assert row.num_queries == res["num_valid_queries"]
    overall = table.iloc[-1]
    n1, n2 = r1["num_valid_queries"], r2["num_valid_queries"]
    assert overall["num_queries"] == n1 + n2
    assert overall["mAP"] == pytest.approx((r1["mAP"] * n1 + r2["mAP"] * n2) / (n1 + n2))
    assert overall["mINP"] == pytest.approx((r1["mINP"] * n1 + r2["mINP"] * n2) / (n1 + n2))
    assert overall["R5"] == pytest.approx((r1["cmc"][4] * n1 + r2["cmc"][4] * n2) / (n1 + n2))
    single = evaluate_cases({"val": case1})
    assert single["case"].tolist() == ["val"]
    with pytest.raises(KeyError, match="lacks"):
        evaluate_cases({"c": {"distmat": case1[0]}})
    with pytest.raises(ValueError, match="case 'c': none of"):
        evaluate_cases({"c": (np.zeros((1, 2)), [0], [1, 2], [0], [1, 1])})


# --------------------------------------------------------------------------------------------
# Distances and flip TTA

def test_compute_distance():
    gen = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(5, 8, generator=gen), torch.randn(7, 8, generator=gen)
    plain = compute_distance(qf, gf, normalize=False)
    assert plain.dtype == np.float32 and plain.shape == (5, 7)
    np.testing.assert_allclose(plain, torch.cdist(qf, gf).pow(2).numpy(), rtol=1e-4, atol=1e-4)
    qn, gn = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    np.testing.assert_allclose(compute_distance(qf.numpy(), gf.numpy()),
                               torch.cdist(qn, gn).pow(2).numpy(), atol=1e-5)
    np.testing.assert_allclose(compute_distance(qf, gf, metric="cosine"),
                               (1 - qn @ gn.T).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"valid metrics: \['euclidean', 'cosine'\]"):
        compute_distance(qf, gf, metric="manhattan")
    with pytest.raises(ValueError, match=r"qf has shape \(5, 8\) and gf \(7, 4\)"):
        compute_distance(qf, gf[:, :4])


def test_flip_average():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    np.testing.assert_allclose(flip_average(a, b), (a + 1) / 2)
    out = flip_average(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(out, torch.Tensor)
    with pytest.raises(ValueError, match=r"feats has shape \(2, 3\) but feats_flipped \(3, 2\)"):
        flip_average(a, b.T)


# --------------------------------------------------------------------------------------------
# Soft-biometric mask

def _attr_frame(rows):
    """DataFrame of the 15 columns, every code unknown except those given per row."""
    base = {a: UNKNOWN_CODE[a] for a in ATTRIBUTES}
    return pd.DataFrame([{**base, **r} for r in rows], columns=list(ATTRIBUTES))


def test_soft_biometric_mask_counts_known_mismatches_only():
    unknown_gender = UNKNOWN_CODE["gender"]
    query = _attr_frame([{"gender": 0, "age": 3}, {"gender": unknown_gender, "age": 3}])
    gallery = _attr_frame([
        {"gender": 0, "age": 3},                          # same codes
        {"gender": 1, "age": 4},                          # two known mismatches
        {"gender": unknown_gender, "age": 4},             # unknown gender on the gallery side
        {"gender": 1, "age": 3, "height": 0},             # height is not a masked attribute
    ])
    mask = soft_biometric_mask(query, gallery)
    assert mask.dtype == np.float32 and mask.shape == (2, 4)
    np.testing.assert_array_equal(mask, [[0, 200, 100, 100],     # query knows gender and age
                                         [0, 100, 100, 0]])      # query's gender unknown
    arrays = soft_biometric_mask(query.to_numpy(), torch.tensor(gallery.to_numpy()))
    np.testing.assert_array_equal(arrays, mask)
    only_age = soft_biometric_mask(query, gallery, attributes=("age",), penalty=1.5)
    np.testing.assert_array_equal(only_age, [[0, 1.5, 1.5, 0], [0, 1.5, 1.5, 0]])
    with_nan = gallery.astype(float)
    with_nan.loc[1, "gender"] = np.nan                  # missing value = unknown
    assert soft_biometric_mask(query, with_nan)[0, 1] == 100
    assert set(MASKED_ATTRIBUTES) == {"gender", "age", "ethnicity", "body_volume"}


def test_soft_biometric_mask_errors():
    frame = _attr_frame([{}])
    with pytest.raises(KeyError, match="unknown attributes \\['shoe_size'\\]"):
        soft_biometric_mask(frame, frame, attributes=("shoe_size",))
    with pytest.raises(KeyError, match="query attributes lack column 'age'"):
        soft_biometric_mask(frame.drop(columns="age"), frame)
    with pytest.raises(ValueError, match=r"shape \(1, 4\); expected \(N, 15\)"):
        soft_biometric_mask(np.zeros((1, 4)), frame)


# --------------------------------------------------------------------------------------------
# Top-k ranking and re-ranking

def test_rank_gallery_is_a_stable_top_k():
    distmat = np.random.default_rng(12).integers(0, 4, size=(30, 25)).astype(np.float32)
    top = rank_gallery(distmat, k=10)
    np.testing.assert_array_equal(top, np.argsort(distmat, axis=1, kind="stable")[:, :10])
    np.testing.assert_array_equal(rank_gallery(torch.from_numpy(distmat), k=25),
                                  np.argsort(distmat, axis=1, kind="stable"))
    with pytest.raises(ValueError, match="k=26 but the gallery has 25 items"):
        rank_gallery(distmat, k=26)


def _euclidean(a, b):
    return np.linalg.norm(a[:, None] - b[None, :], axis=2).astype(np.float32)


def _toy_rerank_case():
    """2-D points: the query (identity 0) at the origin, identity 0's gallery items around
    (-1.1, 0), identity 1's around (1.6, 0), and an impostor b0 of identity 1 at (0.9, 0): b0 is
    the query's nearest item, but its own nearest neighbours are identity 1's items, while the
    query is among the 5 nearest neighbours of every identity-0 item."""
    query = np.array([[0.0, 0.0]])
    gallery = np.array([[0.9, 0.0],
                        [-1.0, 0.3], [-1.0, -0.3], [-1.2, 0.3], [-1.2, -0.3],
                        [1.5, 0.3], [1.5, -0.3], [1.7, 0.3], [1.7, -0.3]])
    g_pids = np.array([1, 0, 0, 0, 0, 1, 1, 1, 1])
    return (_euclidean(query, gallery), _euclidean(query, query), _euclidean(gallery, gallery),
            g_pids)


def reference_re_rank(qg, qq, gg, k1, k2, lambda_value, strict=True):
    """k-reciprocal re-ranking written out set by set, one sample at a time; `strict` is the
    released code's expansion rule (overlap > 2/3), False the looser >= 2/3."""
    Q = len(qg)
    dist = np.block([[qq, qg], [qg.T, gg]]).astype(np.float32)
    dist /= dist.max(axis=1, keepdims=True)
    N = len(dist)
    order = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(p, k):
        return {g for g in order[p, :k + 1] if p in order[g, :k + 1]}

    V = np.zeros((N, N))
    for p in range(N):
        r_p = reciprocal(p, k1)
        expanded = set(r_p)
        for q in r_p:
            r_q = reciprocal(q, max(1, round(k1 / 2)))
            overlap, size = len(r_p & r_q), len(r_q)
            if (3 * overlap > 2 * size) if strict else (3 * overlap >= 2 * size):
                expanded |= r_q
        idx = sorted(expanded)
        V[p, idx] = np.exp(-dist[p, idx].astype(np.float64))
        V[p] /= V[p].sum()
    if k2 > 1:
        V = np.stack([V[order[p, :k2]].mean(axis=0) for p in range(N)])
    jaccard = np.array([[1 - np.minimum(V[p], V[Q + g]).sum() / np.maximum(V[p], V[Q + g]).sum()
                         for g in range(N - Q)] for p in range(Q)])
    return (1 - lambda_value) * jaccard + lambda_value * dist[:Q, Q:]


def test_re_rank_fixes_a_wrong_rank1():
    qg, qq, gg, g_pids = _toy_rerank_case()
    ids = ([0], g_pids, [0], np.ones(len(g_pids), int))
    assert g_pids[qg.argmin()] == 1                         # wrong Rank-1 before re-ranking
    assert evaluate(qg, *ids)["cmc"][0] == 0
    reranked = re_rank(qg, qq, gg, k1=5, k2=3, lambda_value=0.3)
    assert reranked.shape == qg.shape and reranked.dtype == np.float32
    assert g_pids[reranked.argmin()] == 0                   # right after re-ranking
    assert evaluate(reranked, *ids)["cmc"][0] == 1
    assert evaluate(reranked, *ids)["mAP"] > evaluate(qg, *ids)["mAP"]


def test_re_rank_limits_and_errors():
    qg, qq, gg, _ = _toy_rerank_case()
    # lambda = 1 keeps the original (row-normalised) distance, hence its ranking
    np.testing.assert_array_equal(np.argsort(re_rank(qg, qq, gg, k1=4, k2=1, lambda_value=1.0),
                                             kind="stable"), np.argsort(qg, kind="stable"))
    jaccard = re_rank(qg, qq, gg, k1=4, k2=1, lambda_value=0.0)
    assert (jaccard >= 0).all() and (jaccard <= 1 + 1e-6).all()
    assert re_rank(qg, qq, gg, k1=50, k2=50).shape == qg.shape      # k larger than the set
    with pytest.raises(ValueError, match=r"expected \(Q, G\), \(Q, Q\) and \(G, G\)"):
        re_rank(qg, gg, qq)
    with pytest.raises(ValueError, match="lambda_value"):
        re_rank(qg, qq, gg, lambda_value=1.5)


@pytest.mark.parametrize("k1,k2,lambda_value,seed", [(5, 3, 0.3, 16), (4, 1, 0.0, 16), (8, 6, 0.5, 16),
                                                     (4, 1, 0.0, 3), (4, 3, 0.3, 5)])
def test_re_rank_matches_the_set_by_set_reference(k1, k2, lambda_value, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 3)) * 2
    q = centres[rng.integers(0, 5, 8)] + rng.normal(size=(8, 3))
    g = centres[rng.integers(0, 5, 30)] + rng.normal(size=(30, 3))
    args = (_euclidean(q, g), _euclidean(q, q), _euclidean(g, g))
    np.testing.assert_allclose(re_rank(*args, k1=k1, k2=k2, lambda_value=lambda_value),
                               reference_re_rank(*args, k1, k2, lambda_value), atol=1e-5)


def test_re_rank_expands_only_above_two_thirds():
    """The boundary case (overlap exactly 2/3) is not expanded, as in the released code: on these
    cases the loose rule (>= 2/3) gives other distances, the strict one is what re_rank does."""
    differing = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(5, 3)) * 2
        q = centres[rng.integers(0, 5, 8)] + rng.normal(size=(8, 3))
        g = centres[rng.integers(0, 5, 30)] + rng.normal(size=(30, 3))
        args = (_euclidean(q, g), _euclidean(q, q), _euclidean(g, g))
        strict = reference_re_rank(*args, 4, 1, 0.0, strict=True)
        loose = reference_re_rank(*args, 4, 1, 0.0, strict=False)
        np.testing.assert_allclose(re_rank(*args, k1=4, k2=1, lambda_value=0.0), strict, atol=1e-5)
        differing += not np.allclose(strict, loose, atol=1e-5)
    assert differing > 0          # the boundary case did occur: the two rules were told apart


def test_re_rank_jaccard_against_dense_sums():
    # the sparse shared-mass sum equals the dense definition sum_j min(V_p[j], V_g[j])
    rng = np.random.default_rng(13)
    V = rng.random((7, 9)) * (rng.random((7, 9)) < 0.4)
    rows, cols = np.nonzero(V)
    shared = _shared_mass(rows, cols, V[rows, cols], 3, 4)
    dense = np.minimum(V[:3, None, :], V[None, 3:, :]).sum(axis=2)
    np.testing.assert_allclose(shared, dense)


# --------------------------------------------------------------------------------------------
# Submission file

def _ranking(prefix, num_queries, num_names=12):
    return [(f"{prefix}_q{i}", [f"{prefix}_g{i}_{j}" for j in range(num_names)])
            for i in range(num_queries)]


def test_submission_round_trip(tmp_path):
    case1, case2 = _ranking("c1", 3), _ranking("c2", 2, num_names=10)
    path = write_submission(tmp_path / "out" / "submission.csv", case1, case2)
    assert path.read_text().splitlines()[0] == "row_id,query_tracklet,gallery_tracklets"
    table = read_submission(path)
    assert table["row_id"].tolist() == [1, 2, 3, 4, 5]
    assert table["query_tracklet"].tolist() == ["c1_q0", "c1_q1", "c1_q2", "c2_q0", "c2_q1"]
    assert all(len(names) == 10 for names in table["gallery_tracklets"])
    assert table["gallery_tracklets"][0] == case1[0][1][:10]
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]   # no temporary left


def test_submission_from_rank_gallery(tmp_path):
    distmat = np.random.default_rng(14).random((3, 12))
    gallery = [f"g{j}" for j in range(12)]
    ranking = ranking_from_indices(["a", "b", "c"], gallery, rank_gallery(distmat))
    table = read_submission(write_submission(tmp_path / "s.csv", ranking, []))
    assert table["gallery_tracklets"][1] == [gallery[j] for j in np.argsort(distmat[1])[:10]]


def test_submission_errors(tmp_path):
    with pytest.raises(ValueError, match=r"case2_ranking\[0\] \(query 'x'\) has 9 gallery names"):
        write_submission(tmp_path / "s.csv", [], [("x", [f"g{i}" for i in range(9)])])
    with pytest.raises(ValueError, match="without whitespace"):
        write_submission(tmp_path / "s.csv", [("a b", [f"g{i}" for i in range(10)])], [])
    assert not list(tmp_path.iterdir())
    bad = tmp_path / "bad.csv"
    bad.write_text("row_id,query_tracklet,gallery_tracklets\n2,q,a b c d e f g h i j\n")
    with pytest.raises(ValueError, match="bad.csv:2: row_id '2'; expected 1"):
        read_submission(bad)
    with pytest.raises(FileNotFoundError):
        read_submission(tmp_path / "missing.csv")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_agree_with_numpy():
    distmat, *ids = random_case(15, 40, 200, 10, 3, levels=9)
    expected = evaluate(distmat, *ids, per_query=True)
    got = evaluate(torch.from_numpy(distmat).cuda(), *[torch.as_tensor(x).cuda() for x in ids],
                   per_query=True)
    np.testing.assert_array_equal(got["first_rank"], expected["first_rank"])
    np.testing.assert_allclose(got["ap"], expected["ap"], rtol=1e-12)
    qf = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(compute_distance(qf.cuda(), qf.cuda()), compute_distance(qf, qf),
                               atol=1e-5)
    np.testing.assert_array_equal(rank_gallery(torch.from_numpy(distmat).cuda()),
                                  rank_gallery(distmat))
