"""The challenge submission file: its one row rule, the writer and the checked reader.

The CSV (METHOD §5) has the header ``row_id,query_tracklet,gallery_tracklets``, one row per
query, case 1 (aerial -> ground) rows first, and each query's 10 closest gallery tracklet names
space-separated. `submission_row_problem` is the rule of a row that `write_submission` enforces
and `read_submission` checks, so a file the reader accepts is one the writer could have written.
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

from xtfclip_lib.evaluation.rank import _to_numpy
from xtfclip_lib.utils import atomic_write_text

logger = logging.getLogger(__name__)

SUBMISSION_HEADER = ("row_id", "query_tracklet", "gallery_tracklets")
SUBMISSION_NAMES_PER_ROW = 10


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
