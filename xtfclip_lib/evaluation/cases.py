"""The per-case summary table and the library's one list of metric names.

`METRIC_NAMES` (CMC at `CMC_RANKS`, then mAP and mINP) is the order every table, log and figure
of the library shows the metrics in; `CASE_COLUMNS` are the columns of the table
`evaluate_cases` and `summary_table` build: one row per retrieval case (METHOD §5: AG-VPReID
reports aerial -> ground and ground -> aerial) and, with more than one case, an "overall" row
pooling their valid queries.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from xtfclip_lib.evaluation.rank import evaluate

# The metric names, in the order every table, log and figure shows them: CMC at these ranks
# (R1 = fraction of valid queries whose first true match is at rank 1), then mAP and mINP.
CMC_RANKS: tuple[int, ...] = (1, 5, 10, 20)
METRIC_NAMES: tuple[str, ...] = (*(f"R{k}" for k in CMC_RANKS), "mAP", "mINP")
CASE_COLUMNS = ("case", *METRIC_NAMES, "num_queries")
_CASE_KEYS = ("distmat", "q_pids", "g_pids", "q_camids", "g_camids")


def _summary_row(name: str, first_rank: np.ndarray, ap: np.ndarray, inp: np.ndarray) -> dict:
    """One row of the table: `CASE_COLUMNS` -> value, from the per-query results of the valid
    queries (R<k> = fraction whose first true match is within rank k)."""
    values = (*(float((first_rank <= k).mean()) for k in CMC_RANKS), float(ap.mean()),
              float(inp.mean()))
    return {"case": name, **dict(zip(METRIC_NAMES, values, strict=True)),
            "num_queries": int(len(first_rank))}


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
