"""The AG-VPReID on-disk layout: tracklet records, train relabelling, attribute tables, validation.

METHOD §1 describes the layout, shared by the real download and the synthetic set; its names
are defined once in `xtfclip_lib.data.layout`. The camera id is read from each frame's file name (the integer after a 'C' not preceded by a
letter), the platform from the camera (C0-C3 ground, C4-C5 aerial). Test pids stay the dataset's
own (METHOD §7: relabelling query and gallery separately misaligns them); only the training set is
relabelled, by `relabel`. Each case reads its own attribute table (METHOD §7).

Everything that could give a silently wrong label instead raises an error naming the path.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from xtfclip_lib.data.attributes import ATTRIBUTES, CSV_COLUMNS, ID_COLUMN, UNKNOWN_CODE
from xtfclip_lib.data.layout import (AERIAL_CAMERAS, ATTRIBUTE_DIR, ATTRIBUTE_FILES, CAMERA_PATTERN, CASE_DIRS,
                                     CASE_SIDES, FRAME_EXTENSIONS, FRAME_NUMBER_PATTERN, GROUND_CAMERAS,
                                     SPLIT_FOLDERS, TRAIN_DIR)

logger = logging.getLogger(__name__)

SYNTH_HINT = "run 'python -m xtfclip_lib synth --root {root}' to generate the synthetic set"


@dataclass(frozen=True)
class Tracklet:
    """One tracklet: frames of one identity from one camera.

    `frames` are file paths in temporal order; `pid` is the dataset's own person id (the folder
    name as an int); `platform` is "aerial" (C4/C5) or "ground" (C0-C3).
    """
    name: str
    frames: tuple[str, ...]
    pid: int
    camid: int
    platform: str


@dataclass
class AGVPReID:
    """All splits of one AG-VPReID root, plus an attribute table per split.

    `attributes` is keyed "train", "case1", "case2"; each table has index = pid (named ``id``) and
    the 15 columns of `attributes.ATTRIBUTES` as int codes, with every pid of that split present.
    """
    root: str
    train: list[Tracklet]
    case1_query: list[Tracklet]
    case1_gallery: list[Tracklet]
    case2_query: list[Tracklet]
    case2_gallery: list[Tracklet]
    attributes: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, list[Tracklet]]:
        """The five tracklet lists by name, in a fixed order."""
        return {"train": self.train,
                "case1_query": self.case1_query, "case1_gallery": self.case1_gallery,
                "case2_query": self.case2_query, "case2_gallery": self.case2_gallery}


# ------------------------------------------------------------------------------------------------
# Scanning


def platform_of(camid: int, culprit: str | os.PathLike) -> str:
    """"aerial" or "ground" for a camera id; ValueError naming `culprit` for an unknown camera."""
    if camid in GROUND_CAMERAS:
        return "ground"
    if camid in AERIAL_CAMERAS:
        return "aerial"
    raise ValueError(f"{culprit}: camera id C{camid} is not an AG-VPReID camera; expected C0-C3 "
                     f"(ground) or C4-C5 (aerial)")


def camid_of(frame_name: str, culprit: str | os.PathLike) -> int:
    """Camera id from a frame file name (first 'C<digits>' not preceded by a letter)."""
    match = CAMERA_PATTERN.search(frame_name)
    if match is None:
        raise ValueError(f"{culprit}: frame name {frame_name!r} has no camera id; expected "
                         f"'C<digit>' in the name, e.g. 0007_C4_T000_F0000.jpg")
    return int(match.group(1))


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def sort_frames(names: Iterable[str]) -> list[str]:
    """Frame names in temporal order: by the number after 'F' when every name has one, else by
    natural order of the whole name (so F2 comes before F10 either way)."""
    names = list(names)
    numbers = [FRAME_NUMBER_PATTERN.findall(n) for n in names]
    if names and all(numbers):
        return [n for _, n in sorted(zip((int(m[-1]) for m in numbers), names))]
    return sorted(names, key=_natural_key)


def _subdirs(path: Path) -> list[os.DirEntry]:
    """Visible subdirectories of `path`, sorted by name (files there are not tracklets)."""
    with os.scandir(path) as entries:
        return sorted((e for e in entries if not e.name.startswith(".") and e.is_dir()),
                      key=lambda e: e.name)


def _scan_tracklet(path: Path, pid: int) -> Tracklet:
    with os.scandir(path) as entries:
        names = [e.name for e in entries
                 if e.name.lower().endswith(FRAME_EXTENSIONS) and not e.name.startswith(".")
                 and e.is_file()]
    if not names:
        raise ValueError(f"{path}: empty tracklet folder (no {'/'.join(FRAME_EXTENSIONS)} frames)")
    names = sort_frames(names)
    camids = {camid_of(n, path / n) for n in names}
    if len(camids) > 1:
        raise ValueError(f"{path}: frames of one tracklet come from different cameras "
                         f"{sorted(f'C{c}' for c in camids)}; a tracklet is one camera's sequence")
    camid = camids.pop()
    return Tracklet(name=path.name, frames=tuple(str(path / n) for n in names), pid=pid,
                    camid=camid, platform=platform_of(camid, path / names[0]))


def scan_split(split_dir: str | os.PathLike) -> list[Tracklet]:
    """Every tracklet under ``split_dir/<pid>/<tracklet>/``, sorted by (pid folder, tracklet).

    Raises FileNotFoundError for a missing folder and ValueError for a pid folder that is not an
    integer, an empty tracklet folder, a frame name without a camera id, or mixed cameras.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} not found; expected the AG-VPReID layout of "
                                f"METHOD.md §1 (<split>/<pid>/<tracklet>/<frame>.jpg)")
    tracklets: list[Tracklet] = []
    for pid_entry in _subdirs(split_dir):
        if not pid_entry.name.isdigit():
            raise ValueError(f"{pid_entry.path}: person folder name {pid_entry.name!r} is not an "
                             f"integer id; expected zero-padded digits such as 0007")
        pid = int(pid_entry.name)
        tracklet_dirs = _subdirs(Path(pid_entry.path))
        if not tracklet_dirs:
            raise ValueError(f"{pid_entry.path}: person folder holds no tracklet folders")
        tracklets.extend(_scan_tracklet(Path(t.path), pid) for t in tracklet_dirs)
    if not tracklets:
        raise ValueError(f"{split_dir}: no tracklets found; expected <pid>/<tracklet>/<frame>.jpg")
    return tracklets


# ------------------------------------------------------------------------------------------------
# Attribute tables


def unknown_row() -> dict[str, int]:
    """The 15 attributes all set to their "unknown" code."""
    return dict(UNKNOWN_CODE)


def read_attribute_csv(path: str | os.PathLike) -> pd.DataFrame:
    """One attribute CSV as a DataFrame: index = pid (``id``), the 15 attribute columns as ints.

    Columns are matched by name when the header has exactly ``id`` + the 15 names (any order).
    A header with other names but exactly 16 columns is read by position, in METHOD §1's order
    (the real AG-VPReID CSVs name their columns differently). Anything else is a ValueError
    listing the missing and unexpected columns. Non-integer, out-of-range or duplicated values
    are errors naming the file, never silently wrong attributes.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in CSV_COLUMNS if c not in columns]
    unexpected = [c for c in columns if c not in CSV_COLUMNS]
    if not missing and not unexpected and len(columns) == len(CSV_COLUMNS):
        frame.columns = columns
        frame = frame[list(CSV_COLUMNS)]
    elif len(columns) == len(CSV_COLUMNS):
        if all(re.fullmatch(r"[-+]?\d+(\.\d*)?", c) for c in columns):
            raise ValueError(f"{path}: the first row {columns} looks like data, not a header; "
                             f"expected a header row ({', '.join(CSV_COLUMNS)})")
        misplaced = [c for i, c in enumerate(columns) if c in CSV_COLUMNS and CSV_COLUMNS[i] != c]
        if misplaced:
            raise ValueError(f"{path}: columns {misplaced} are named like attribute columns but sit "
                             f"in other positions, and columns {unexpected} are unknown; name all "
                             f"16 columns {list(CSV_COLUMNS)} or none of them")
        logger.info("%s: header %s differs from %s; reading the columns by position",
                    path, columns, list(CSV_COLUMNS))
        frame.columns = list(CSV_COLUMNS)
    else:
        raise ValueError(f"{path}: attribute CSV has {len(columns)} columns; expected {len(CSV_COLUMNS)} "
                         f"({', '.join(CSV_COLUMNS)}); missing columns: {missing or 'none'}; "
                         f"unexpected columns: {unexpected or 'none'}")
    for column in CSV_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: column {column!r} row {row + 2} holds "
                             f"{frame[column].iloc[row]!r}; expected an integer code")
        frame[column] = values.astype(np.int64)
    for column in ATTRIBUTES:
        out_of_range = (frame[column] < 0) | (frame[column] > UNKNOWN_CODE[column])
        if out_of_range.any():
            row = int(np.flatnonzero(out_of_range.to_numpy())[0])
            raise ValueError(f"{path}: column {column!r} row {row + 2} holds code "
                             f"{frame[column].iloc[row]}; valid codes are 0..{UNKNOWN_CODE[column]} "
                             f"({UNKNOWN_CODE[column]} = unknown)")
    duplicated = frame[ID_COLUMN].duplicated()
    if duplicated.any():
        raise ValueError(f"{path}: person id {int(frame[ID_COLUMN][duplicated].iloc[0])} appears "
                         "more than once; expected one row per id")
    return frame.set_index(ID_COLUMN)


def _read_split_attributes(attr_dir: Path, split: str) -> pd.DataFrame | None:
    """The table of one split, from ``<split>.csv`` or, as the real download ships it for the
    test cases, from ``<case_dir>/{query,gallery}.csv`` merged; None when neither exists."""
    flat = attr_dir / ATTRIBUTE_FILES[split]
    if flat.is_file():
        return read_attribute_csv(flat)
    parts_dir = attr_dir / Path(ATTRIBUTE_FILES[split]).stem
    parts = [parts_dir / f"{name}.csv" for name in CASE_SIDES]
    if not any(p.is_file() for p in parts):
        return None
    tables = [read_attribute_csv(p) for p in parts if p.is_file()]
    merged = pd.concat(tables)
    dup = merged.index.duplicated(keep=False)
    if dup.any():
        conflicting = merged[dup].groupby(level=0).nunique().max(axis=1) > 1
        if conflicting.any():
            raise ValueError(f"{parts_dir}: person id {int(conflicting.idxmax())} has different "
                             "attributes in query.csv and gallery.csv")
    return merged[~merged.index.duplicated()]


def complete_attributes(table: pd.DataFrame | None, pids: Iterable[int], split: str,
                        source: str | os.PathLike) -> pd.DataFrame:
    """`table` plus an all-unknown row for every pid of the split it lacks (METHOD §1).

    One warning per split gives the count, so a wrong or partial CSV is visible in the log.
    """
    pids = sorted(set(int(p) for p in pids))
    if table is None:
        table = pd.DataFrame(columns=list(ATTRIBUTES), dtype=np.int64)
        table.index.name = ID_COLUMN
    missing = [p for p in pids if p not in table.index]
    if missing:
        logger.warning("%s: %d of %d person ids of split %r are not in the attribute table; their "
                       "15 attributes are set to 'unknown' (e.g. id %d)",
                       source, len(missing), len(pids), split, missing[0])
        fill = pd.DataFrame([unknown_row()] * len(missing), index=pd.Index(missing, name=ID_COLUMN))
        table = pd.concat([table, fill]) if len(table) else fill
    table = table[list(ATTRIBUTES)].astype(np.int64)
    table.index = table.index.astype(np.int64)
    table.index.name = ID_COLUMN
    return table.sort_index()


def attributes_for(tracklets: Sequence[Tracklet], table: pd.DataFrame) -> pd.DataFrame:
    """(N, 15) attribute codes, row i for tracklets[i] (index 0..N-1), looked up by pid.

    Feeds the soft-biometric distance mask (switch 7). A pid missing from `table` is unknown.
    """
    pids = [t.pid for t in tracklets]
    rows = table.reindex(pids)
    rows = rows.fillna(pd.Series(unknown_row())).astype(np.int64)
    return rows.reset_index(drop=True)[list(ATTRIBUTES)]


# ------------------------------------------------------------------------------------------------
# Whole dataset


def load_agvpreid(root: str | os.PathLike, *, require_attributes: bool = True) -> AGVPReID:
    """Scan an AG-VPReID root (real or synthetic) into tracklet lists and attribute tables.

    With ``require_attributes=False`` a missing attribute CSV makes that split all-unknown
    (with the usual warning) instead of raising FileNotFoundError.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"dataset root {root} not found; expected the AG-VPReID layout of METHOD.md §1 "
            f"(train/, case1_aerial_to_ground/, case2_ground_to_aerial/, attributes/), or "
            f"{SYNTH_HINT.format(root=root)}")
    for needed in SPLIT_FOLDERS:
        if not (root_path / needed).is_dir():
            raise FileNotFoundError(
                f"{root_path / needed} not found (dataset root {root}); expected the AG-VPReID "
                f"layout of METHOD.md §1, or {SYNTH_HINT.format(root=root)}")
    train = scan_split(root_path / TRAIN_DIR)
    cases = {f"{case}_{side}": scan_split(root_path / folder / side)
             for case, folder in CASE_DIRS.items() for side in CASE_SIDES}
    pids_of = {"train": [t.pid for t in train],
               **{case: [t.pid for side in CASE_SIDES for t in cases[f"{case}_{side}"]]
                  for case in CASE_DIRS}}
    attr_dir = root_path / ATTRIBUTE_DIR
    attributes: dict[str, pd.DataFrame] = {}
    for split in ATTRIBUTE_FILES:
        table = _read_split_attributes(attr_dir, split)
        if table is None and require_attributes:
            raise FileNotFoundError(
                f"{attr_dir / ATTRIBUTE_FILES[split]} not found; expected one attribute CSV per "
                f"split (id + 15 columns, METHOD.md §1), or {SYNTH_HINT.format(root=root)}")
        attributes[split] = complete_attributes(table, pids_of[split], split,
                                                attr_dir / ATTRIBUTE_FILES[split])
    logger.info("%s: %d train, %d/%d case1 query/gallery, %d/%d case2 query/gallery tracklets",
                root, len(train), len(cases["case1_query"]), len(cases["case1_gallery"]),
                len(cases["case2_query"]), len(cases["case2_gallery"]))
    return AGVPReID(root=str(root), train=train, attributes=attributes, **cases)


def relabel(tracklets: Sequence[Tracklet]) -> dict[int, int]:
    """pid -> training label 0..N-1, in increasing pid order (training set only: METHOD §7)."""
    return {pid: label for label, pid in enumerate(sorted({t.pid for t in tracklets}))}


def split_validation(tracklets: Sequence[Tracklet], num_val_ids: int, seed: int
                     ) -> tuple[list[Tracklet], list[Tracklet], list[Tracklet]]:
    """Hold out `num_val_ids` training identities for model selection (METHOD §7).

    The held-out identities' aerial tracklets are the validation query and their ground
    tracklets the gallery, as in case 1; only identities seen from both platforms can be
    chosen. The rest stays for training. Returns (train_rest, val_query, val_gallery), each in
    the input order; the choice depends only on `seed` and the set of pids.
    """
    if num_val_ids < 0:
        raise ValueError(f"num_val_ids must be >= 0, got {num_val_ids}")
    if num_val_ids == 0:
        return list(tracklets), [], []
    platforms: dict[int, set[str]] = {}
    for t in tracklets:
        platforms.setdefault(t.pid, set()).add(t.platform)
    eligible = sorted(pid for pid, seen in platforms.items() if seen == {"aerial", "ground"})
    if num_val_ids > len(eligible):
        raise ValueError(f"data.num_val_ids={num_val_ids} but only {len(eligible)} of "
                         f"{len(platforms)} training identities have both aerial and ground "
                         f"tracklets; use at most {len(eligible)}")
    if num_val_ids >= len(platforms):
        raise ValueError(f"data.num_val_ids={num_val_ids} would hold out every one of the "
                         f"{len(platforms)} training identities")
    rng = np.random.default_rng(seed)
    held_out = set(int(p) for p in rng.choice(eligible, size=num_val_ids, replace=False))
    train_rest = [t for t in tracklets if t.pid not in held_out]
    val_query = [t for t in tracklets if t.pid in held_out and t.platform == "aerial"]
    val_gallery = [t for t in tracklets if t.pid in held_out and t.platform == "ground"]
    return train_rest, val_query, val_gallery
