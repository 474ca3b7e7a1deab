"""Retrieval evaluation: pure functions of distance matrices and ids (numpy), no model.

The protocol (same identity *and* same camera is never a match), CMC, mAP and mINP (`rank`, on
the sort-free kernel of `ranking`), the per-case summary table and the library's one list of
metric names (`cases`), distances with flip averaging and the soft-biometric mask (`distance`),
top-k ranking and k-reciprocal re-ranking (`rerank`) and the challenge submission file
(`submission`).
"""
from __future__ import annotations

from xtfclip_lib.evaluation.cases import (CASE_COLUMNS, CMC_RANKS, METRIC_NAMES, evaluate_cases,
                                          summary_table)
from xtfclip_lib.evaluation.distance import (DISTANCE_METRICS, compute_distance, flip_average,
                                             soft_biometric_mask)
from xtfclip_lib.evaluation.rank import evaluate, protocol_mask
from xtfclip_lib.evaluation.rerank import rank_gallery, re_rank
from xtfclip_lib.evaluation.submission import (ranking_from_indices, read_submission,
                                               submission_row_problem, write_submission)

__all__ = ["CASE_COLUMNS", "CMC_RANKS", "DISTANCE_METRICS", "METRIC_NAMES", "compute_distance",
           "evaluate", "evaluate_cases", "flip_average", "protocol_mask", "rank_gallery",
           "ranking_from_indices", "re_rank", "read_submission", "soft_biometric_mask",
           "submission_row_problem", "summary_table", "write_submission"]
