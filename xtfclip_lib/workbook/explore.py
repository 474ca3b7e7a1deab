"""Data summaries for the exploration notebook: tables of splits, cameras, lengths, attributes.

Pure functions from a loaded `AGVPReID` (or its tracklet lists) to pandas DataFrames, so the
notebook only calls and shows them, and `plots` draws them. The tables answer the questions a
reader of METHOD §1 has about a dataset before training on it: how many identities and tracklets
each split holds, which cameras and platforms they come from, how long and how large the
tracklets are, and how the 15 soft biometrics are spread (and how often they are unknown).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from xtfclip_lib.utils import paths
from xtfclip_lib.data import AERIAL_CAMERAS, ATTRIBUTES, GROUND_CAMERAS, MANIFEST, UNKNOWN_CODE, AGVPReID, Tracklet

logger = logging.getLogger(__name__)

# The dataset roots of the shipped synthetic presets (`tiny`: data/synthetic-ag, `quick`:
# data/synthetic-ag-quick). Only these are generated when missing: any other missing root is a
# user's dataset (e.g. the real AG-VPReID) that was not put in place, and must be an error.
SYNTHETIC_ROOTS: tuple[str, ...] = ("data/synthetic-ag", "data/synthetic-ag-quick")
ATTRIBUTE_SPLITS: tuple[str, ...] = ("train", "case1", "case2")


def notebook_setup(level: int = logging.WARNING) -> Path:
    """The first call of every notebook: project root as working directory, quiet plain logging.

    Relative paths then mean the project root whatever folder the kernel started in
    (`paths.use_project_root`). Log records of `level` and above are printed to stdout as plain
    ``LEVEL logger: message`` lines, so that an executed notebook shows them as ordinary text
    rather than as red stderr blocks; the library's INFO records still reach a run's
    ``train.log``. Calling it again replaces its handler rather than adding a second one.
    Returns the project root.
    """
    root = paths.use_project_root()
    top = logging.getLogger()
    for handler in [h for h in top.handlers if getattr(h, "_xtfclip_notebook", False)]:
        top.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._xtfclip_notebook = True
    top.addHandler(handler)
    top.setLevel(min(level, logging.WARNING))
    logging.getLogger("xtfclip_lib").setLevel(logging.INFO)   # for train.log, not the notebook
    return root


def ensure_dataset(root: str | os.PathLike, num_ids: int, seed: int,
                   synthetic_roots: Sequence[str] = SYNTHETIC_ROOTS) -> Path:
    """`root` as a Path, generating the synthetic set there first when it is missing.

    Generation happens only when `root` does not exist and is one of `synthetic_roots` (compared
    as absolute paths from the working directory, which the notebooks make the project root),
    so a missing real dataset is reported, with its absolute path, never replaced by a
    synthetic one. An existing root is returned untouched; `load_agvpreid` checks its layout.
    """
    root = Path(root)
    if root.exists():
        return root
    if os.path.abspath(root) not in {os.path.abspath(r) for r in synthetic_roots}:
        raise FileNotFoundError(
            f"dataset root {os.path.abspath(root)} not found; put the AG-VPReID download there "
            f"(METHOD.md §1 layout), or use a synthetic root {list(synthetic_roots)}, which is generated when "
            f"missing, or run 'python -m xtfclip_lib synth --root {root}'")
    from xtfclip_lib.data import generate_synthetic  # imported here: only needed to generate

    logger.info("%s not found: generating the synthetic set (%d ids, seed %d)", root, num_ids, seed)
    generate_synthetic(root, num_ids=num_ids, seed=seed)
    return root


def tracklet_table(dataset: AGVPReID, frame_size: bool = True) -> pd.DataFrame:
    """One row per tracklet of every split: split, pid, tracklet, camid, platform, num_frames.

    With `frame_size`, also ``height`` and ``width`` (pixels) of each tracklet's first frame,
    read from the JPEG header only; aerial crops are expected to be much smaller.
    """
    rows = []
    for split, tracklets in dataset.splits.items():
        for t in tracklets:
            row = {"split": split, "pid": t.pid, "tracklet": t.name, "camid": t.camid,
                   "platform": t.platform, "num_frames": len(t.frames)}
            if frame_size:
                try:
                    with Image.open(t.frames[0]) as image:
                        row["width"], row["height"] = image.size
                except OSError as exc:
                    raise ValueError(f"{t.frames[0]}: not a readable image ({exc})") from None
            rows.append(row)
    if not rows:
        raise ValueError(f"dataset {dataset.root} holds no tracklets")
    return pd.DataFrame(rows)


def split_statistics(table: pd.DataFrame) -> pd.DataFrame:
    """Per split: identities, tracklets (ground / aerial), frames, tracklet length, cameras.

    `table` is `tracklet_table`'s output; the result is indexed by split, in table order.
    """
    grouped = table.groupby("split", sort=False)
    stats = pd.DataFrame({
        "ids": grouped["pid"].nunique(),
        "tracklets": grouped.size(),
        "ground_tracklets": grouped["platform"].apply(lambda p: int((p == "ground").sum())),
        "aerial_tracklets": grouped["platform"].apply(lambda p: int((p == "aerial").sum())),
        "frames": grouped["num_frames"].sum(),
        "mean_length": grouped["num_frames"].mean().round(1),
        "min_length": grouped["num_frames"].min(),
        "max_length": grouped["num_frames"].max(),
        "cameras": grouped["camid"].apply(lambda c: " ".join(f"C{i}" for i in sorted(set(c)))),
    })
    stats.index.name = "split"
    return stats


def camera_statistics(table: pd.DataFrame) -> pd.DataFrame:
    """Per camera: platform, tracklets in each split, mean length, mean first-frame size.

    Rows are C0..C5 (every AG-VPReID camera, zero where a camera is absent), columns the
    platform, one tracklet count per split, then ``mean_length`` and, when `table` has them,
    ``mean_height`` / ``mean_width`` in pixels.
    """
    cameras = list(GROUND_CAMERAS) + list(AERIAL_CAMERAS)
    splits = list(dict.fromkeys(table["split"]))
    counts = (table.groupby(["camid", "split"]).size().unstack(fill_value=0)
              .reindex(index=cameras, columns=splits, fill_value=0))
    stats = pd.DataFrame({"platform": ["ground" if c in GROUND_CAMERAS else "aerial"
                                       for c in cameras]}, index=cameras)
    stats = stats.join(counts)
    by_camera = table.groupby("camid")
    stats["mean_length"] = by_camera["num_frames"].mean().reindex(cameras).round(1)
    for column in ("height", "width"):
        if column in table.columns:
            stats[f"mean_{column}"] = by_camera[column].mean().reindex(cameras).round(1)
    stats.index = [f"C{c}" for c in cameras]
    stats.index.name = "camera"
    return stats


def attribute_value_names(root: str | os.PathLike) -> dict[str, tuple[str, ...]] | None:
    """What each attribute code means at `root`, for labelling plots; None when unknown.

    A synthetic set (its ``manifest.json`` names the generator) uses
    `xtfclip_lib.data.synth.ATTRIBUTE_VALUES`; the real AG-VPReID has its own meanings, which
    this package does not ship, so its plots keep the numeric codes.
    """
    manifest = Path(root) / MANIFEST
    try:
        generator = json.loads(manifest.read_text()).get("generator", "")
    except (OSError, ValueError, AttributeError):
        return None
    if generator != "xtfclip_lib.data.synth":
        return None
    from xtfclip_lib.data import ATTRIBUTE_VALUES

    return dict(ATTRIBUTE_VALUES)


def code_name(attribute: str, code: int,
              value_names: dict[str, Sequence[str]] | None = None) -> str:
    """The label of `code`: "unknown" for the unknown code, its name when `value_names` has one,
    else the code itself as text."""
    if code == UNKNOWN_CODE[attribute]:
        return "unknown"
    names = (value_names or {}).get(attribute)
    return str(names[code]) if names is not None and 0 <= code < len(names) else str(code)


def attribute_distribution(attributes: dict[str, pd.DataFrame],
                           value_names: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Tidy share of identities per attribute code (columns split, attribute, code, value,
    count, fraction, unknown).

    `attributes` is `AGVPReID.attributes` (split -> table indexed by pid, the 15 columns). Every
    code 0..UNKNOWN_CODE of every attribute gets a row, zero counts included, so splits line up;
    ``unknown`` marks the code that means "unknown" (METHOD §1). ``value`` is the code's label
    (`code_name`): its name from `value_names` (e.g. `attribute_value_names`), "unknown", or the
    code as text when no names are known.
    """
    rows = []
    for split, table in attributes.items():
        missing = [a for a in ATTRIBUTES if a not in table.columns]
        if missing:
            raise KeyError(f"attribute table {split!r} lacks columns {missing}; expected the 15 "
                           f"columns {list(ATTRIBUTES)}")
        for attribute in ATTRIBUTES:
            codes = np.arange(UNKNOWN_CODE[attribute] + 1)
            counts = np.bincount(table[attribute].to_numpy(dtype=np.int64),
                                 minlength=len(codes))[:len(codes)]
            total = max(int(counts.sum()), 1)
            rows.extend({"split": split, "attribute": attribute, "code": int(code),
                         "value": code_name(attribute, int(code), value_names),
                         "count": int(count), "fraction": count / total,
                         "unknown": bool(code == UNKNOWN_CODE[attribute])}
                        for code, count in zip(codes, counts))
    return pd.DataFrame(rows)


def unknown_shares(distribution: pd.DataFrame) -> pd.DataFrame:
    """Share of identities whose attribute is unknown: attributes x splits (from the tidy table)."""
    unknown = distribution[distribution["unknown"]]
    return unknown.pivot(index="attribute", columns="split", values="fraction").reindex(
        index=list(dict.fromkeys(distribution["attribute"])),
        columns=list(dict.fromkeys(distribution["split"])))


def cross_platform_identity(tracklets: Sequence[Tracklet], seed: int = 0) -> int:
    """A seeded choice among the identities seen from both platforms, preferring most cameras.

    Only identities with the largest number of distinct cameras are candidates, so the montage
    shows as many views as the data has.
    """
    cameras: dict[int, set[int]] = {}
    platforms: dict[int, set[str]] = {}
    for t in tracklets:
        cameras.setdefault(t.pid, set()).add(t.camid)
        platforms.setdefault(t.pid, set()).add(t.platform)
    eligible = [pid for pid, seen in platforms.items() if seen == {"ground", "aerial"}]
    if not eligible:
        raise ValueError(f"none of the {len(platforms)} identities has both ground and aerial "
                         f"tracklets; a cross-platform montage needs one")
    most = max(len(cameras[pid]) for pid in eligible)
    candidates = sorted(pid for pid in eligible if len(cameras[pid]) == most)
    return int(np.random.default_rng(seed).choice(candidates))


def identity_tracklets(tracklets: Sequence[Tracklet], pid: int,
                       per_camera: int = 1) -> list[Tracklet]:
    """Up to `per_camera` tracklets of `pid` from each camera, ground cameras first, by camid.

    Within a camera the longest tracklets come first (more frames to show), ties by name.
    """
    own = [t for t in tracklets if t.pid == pid]
    if not own:
        raise KeyError(f"identity {pid} has no tracklets here")
    chosen: list[Tracklet] = []
    for camid in sorted({t.camid for t in own}, key=lambda c: (c not in GROUND_CAMERAS, c)):
        same = sorted((t for t in own if t.camid == camid), key=lambda t: (-len(t.frames), t.name))
        chosen.extend(same[:per_camera])
    return chosen
