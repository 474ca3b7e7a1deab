"""The one retrieval protocol of validation and test: cases, distances, the mask, the table.

A `RetrievalCase` names a query list, a gallery list and the attribute table of *this* case, which
the soft-biometric mask reads (METHOD §7). `score_cases` is the protocol: distances, optional
re-ranking, the soft-biometric mask *before* the metrics, one table row per case plus overall.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from xtfclip_lib import evaluation
from xtfclip_lib.config import Config, EvalConfig
from xtfclip_lib.data import AGVPReID, Tracklet, attributes_for
from xtfclip_lib.engine.inference import FeatureSet

__all__ = ["RetrievalCase", "case_distmat", "case_distmats", "platform_cases", "score_cases", "test_protocol",
           "validation_protocol"]


@dataclass(frozen=True)
class RetrievalCase:
    """One retrieval task: query and gallery (keys of a dict of tracklet lists) and the attribute
    table of *this* case, which the soft-biometric mask reads (METHOD §7)."""
    name: str
    query: str
    gallery: str
    attributes: pd.DataFrame = dataclasses.field(compare=False, repr=False)


def test_protocol(data: AGVPReID) -> tuple[dict[str, list[Tracklet]], list[RetrievalCase]]:
    """Tracklet lists and cases of the AG-VPReID test set (case 1 aerial->ground, case 2 reverse)."""
    lists = {k: v for k, v in data.splits.items() if k != "train"}
    cases = [RetrievalCase("aerial_to_ground", "case1_query", "case1_gallery", data.attributes["case1"]),
             RetrievalCase("ground_to_aerial", "case2_query", "case2_gallery", data.attributes["case2"])]
    return lists, cases


def validation_protocol(val_query: Sequence[Tracklet], val_gallery: Sequence[Tracklet],
                        train_attributes: pd.DataFrame) -> tuple[dict[str, list[Tracklet]], list[RetrievalCase]]:
    """Held-out training identities, aerial query vs ground gallery, as in case 1 (METHOD §7)."""
    lists = {"val_query": list(val_query), "val_gallery": list(val_gallery)}
    return lists, [RetrievalCase("val_aerial_to_ground", "val_query", "val_gallery", train_attributes)]


def platform_cases(cases: Sequence[RetrievalCase]) -> list[RetrievalCase]:
    """A diagnostic pair on the test identities (METHOD §8): the case-1 ground gallery searched
    with aerial queries (case 1 itself) and with ground queries of the same people (the case-2
    queries), so that the gap between the two rows is what the change of platform costs."""
    case1 = next((c for c in cases if c.query == "case1_query"), None)
    if case1 is None:
        raise ValueError(f"platform_cases needs the test cases (case1_query); got {[c.name for c in cases]}")
    return [case1, RetrievalCase("ground_to_ground", "case2_query", case1.gallery, case1.attributes)]


def case_distmat(query: FeatureSet, gallery: FeatureSet, q_attrs: pd.DataFrame | None,
                 g_attrs: pd.DataFrame | None, eval_cfg: EvalConfig, *, rerank: bool) -> np.ndarray:
    """(Q, G) distances: Euclidean on L2-normalised features, optionally re-ranked, plus the
    soft-biometric penalty when attribute rows are given (added before any metric: METHOD §7).

    The mask is added after re-ranking, so that re-ranking's neighbour sets are built from
    appearance alone and the penalty survives unchanged into the ranking.
    """
    qf, gf = torch.from_numpy(query.features), torch.from_numpy(gallery.features)
    distmat = np.asarray(evaluation.compute_distance(qf, gf), dtype=np.float32)
    if rerank:
        distmat = evaluation.re_rank(distmat, np.asarray(evaluation.compute_distance(qf, qf)),
                                     np.asarray(evaluation.compute_distance(gf, gf)),
                                     k1=eval_cfg.rerank_k1, k2=eval_cfg.rerank_k2,
                                     lambda_value=eval_cfg.rerank_lambda)
    if q_attrs is not None:
        distmat = distmat + evaluation.soft_biometric_mask(
            q_attrs, g_attrs, attributes=eval_cfg.mask_attributes, penalty=eval_cfg.mask_penalty)
    return distmat


def case_distmats(sets: dict[str, FeatureSet], lists: dict[str, list[Tracklet]],
                  cases: Sequence[RetrievalCase], cfg: Config, *, mask: bool | None = None,
                  rerank: bool | None = None) -> dict[str, np.ndarray]:
    """`case_distmat` of every case; `mask`/`rerank` default to the config's switches."""
    mask = cfg.features.soft_biometric_mask if mask is None else mask
    rerank = cfg.eval.rerank if rerank is None else rerank
    out = {}
    for case in cases:
        q_attrs = attributes_for(lists[case.query], case.attributes) if mask else None
        g_attrs = attributes_for(lists[case.gallery], case.attributes) if mask else None
        out[case.name] = case_distmat(sets[case.query], sets[case.gallery], q_attrs, g_attrs,
                                      cfg.eval, rerank=rerank)
    return out


def score_cases(sets: dict[str, FeatureSet], lists: dict[str, list[Tracklet]],
                cases: Sequence[RetrievalCase], cfg: Config, *, mask: bool | None = None,
                rerank: bool | None = None) -> pd.DataFrame:
    """Per-case table (columns case, R1, R5, R10, R20, mAP, mINP; plus "overall" when there is
    more than one case) from precomputed features."""
    distmats = case_distmats(sets, lists, cases, cfg, mask=mask, rerank=rerank)
    return evaluation.evaluate_cases(
        {case.name: (distmats[case.name], sets[case.query].pids, sets[case.gallery].pids,
                     sets[case.query].camids, sets[case.gallery].camids) for case in cases},
        max_rank=cfg.eval.max_rank)
