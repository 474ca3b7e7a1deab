"""The AG-VPReID on-disk layout (METHOD §1): folder, file and camera names, defined once.

The real download and the synthetic set share it, so the reader (`dataset`) and the writer
(`synth`) take every name from here::

    ROOT/train/<pid>/<tracklet>/<frame>.jpg
    ROOT/case1_aerial_to_ground/{query,gallery}/<pid>/<tracklet>/<frame>.jpg
    ROOT/case2_ground_to_aerial/{query,gallery}/<pid>/<tracklet>/<frame>.jpg
    ROOT/attributes/{train,case1_aerial_to_ground,case2_ground_to_aerial}.csv

The camera id is the integer after a 'C' not preceded by a letter in each frame's file name, the
frame number the one after an 'F'; C0-C3 are ground cameras, C4-C5 aerial.
"""
from __future__ import annotations

import re

TRAIN_DIR = "train"
CASE_DIRS: dict[str, str] = {"case1": "case1_aerial_to_ground", "case2": "case2_ground_to_aerial"}
CASE_SIDES: tuple[str, ...] = ("query", "gallery")
# The five tracklet folders, in the order the loader and the manifest list them.
SPLIT_FOLDERS: tuple[str, ...] = (TRAIN_DIR, *(f"{d}/{s}" for d in CASE_DIRS.values() for s in CASE_SIDES))
ATTRIBUTE_DIR = "attributes"
ATTRIBUTE_FILES: dict[str, str] = {"train": "train.csv",
                                   "case1": f"{CASE_DIRS['case1']}.csv",
                                   "case2": f"{CASE_DIRS['case2']}.csv"}
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
GROUND_CAMERAS = (0, 1, 2, 3)   # C0/C1 CCTV, C2/C3 wearable
AERIAL_CAMERAS = (4, 5)         # C4/C5 UAV
CAMERA_PATTERN = re.compile(r"(?<![A-Za-z])C(\d+)")
FRAME_NUMBER_PATTERN = re.compile(r"(?<![A-Za-z])F(\d+)")
MANIFEST = "manifest.json"      # the synthetic set's summary and digest (the real download has none)
