"""Retrieval evaluation: pure functions of distance matrices and ids (numpy), no model.

The protocol (same identity *and* same camera is never a match), CMC, mAP and mINP, the
per-case summary table, distances with flip averaging and the soft-biometric mask, k-reciprocal
re-ranking and the challenge submission file.
"""
from __future__ import annotations

from xtfclip_lib.evaluation.rank import (CASE_COLUMNS, CMC_RANKS, DISTANCE_METRICS, METRIC_NAMES, compute_distance, evaluate,
                                         evaluate_cases, flip_average, protocol_mask, rank_gallery, ranking_from_indices,
                                         re_rank, read_submission, soft_biometric_mask, submission_row_problem, summary_table,
                                         write_submission)

__all__ = ["CASE_COLUMNS", "CMC_RANKS", "DISTANCE_METRICS", "METRIC_NAMES", "compute_distance", "evaluate", "evaluate_cases", "flip_average",
           "protocol_mask", "rank_gallery", "ranking_from_indices", "re_rank", "read_submission",
           "soft_biometric_mask", "submission_row_problem", "summary_table", "write_submission"]
