"""Data summaries of `xtfclip_lib.workbook.explore` on a hand-built AG-VPReID folder with known counts."""
from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xtfclip_lib.workbook import explore

from xtfclip_lib.utils import paths
from xtfclip_lib.config import load_config
from xtfclip_lib.data.attributes import ATTRIBUTES, CSV_COLUMNS, UNKNOWN_CODE
from xtfclip_lib.data.dataset import load_agvpreid

# split folder -> (pid, camid, num_frames) per tracklet
LAYOUT = {
    "train": [(1, 0, 8), (1, 2, 10), (1, 4, 12), (1, 4, 6),   # pid 1: ground C0 C2, aerial C4 (x2)
              (2, 0, 9), (2, 1, 9),                            # pid 2: ground only
              (3, 1, 11), (3, 5, 7)],                          # pid 3: ground C1, aerial C5
    "case1_aerial_to_ground/query": [(10, 4, 8), (11, 5, 9)],
    "case1_aerial_to_ground/gallery": [(10, 0, 10), (11, 2, 12)],
    "case2_ground_to_aerial/query": [(10, 1, 8)],
    "case2_ground_to_aerial/gallery": [(10, 4, 6), (11, 5, 6)],
}
GROUND_HW, AERIAL_HW = (32, 16), (12, 10)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("agvpreid")
    rng = np.random.default_rng(0)
    for split, tracklets in LAYOUT.items():
        counter: dict[tuple[int, int], int] = {}
        for pid, camid, num_frames in tracklets:
            index = counter[(pid, camid)] = counter.get((pid, camid), -1) + 1
            name = f"{pid:04d}_C{camid}_T{index:03d}"
            folder = root / split / f"{pid:04d}" / name
            folder.mkdir(parents=True)
            size = AERIAL_HW if camid >= 4 else GROUND_HW
            for f in range(num_frames):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_F{f:04d}.jpg")
    (root / "attributes").mkdir()
    tables = {"train.csv": [1, 2, 3], "case1_aerial_to_ground.csv": [10, 11],
              "case2_ground_to_aerial.csv": [10, 11]}
    for file_name, pids in tables.items():
        rows = []
        for pid in pids:
            codes = {a: 0 for a in ATTRIBUTES}
            codes["gender"] = UNKNOWN_CODE["gender"] if pid == 3 else pid % 2  # 1: code 1, 2: code 0
            rows.append({"id": pid, **codes})
        pd.DataFrame(rows, columns=list(CSV_COLUMNS)).to_csv(root / "attributes" / file_name,
                                                             index=False)
    return root


@pytest.fixture(scope="module")
def dataset(root):
    return load_agvpreid(root)


@pytest.fixture(scope="module")
def table(dataset):
    return explore.tracklet_table(dataset)


def test_tracklet_table_one_row_per_tracklet_with_sizes(table):
    assert len(table) == sum(len(v) for v in LAYOUT.values())
    assert list(table.columns) == ["split", "pid", "tracklet", "camid", "platform", "num_frames",
                                   "width", "height"]
    train = table[table.split == "train"].sort_values(["pid", "camid", "num_frames"])
    assert list(train.num_frames) == [8, 10, 6, 12, 9, 9, 11, 7]
    aerial = table[table.platform == "aerial"]
    assert set(aerial.camid) == {4, 5}
    assert set(zip(aerial.height, aerial.width)) == {AERIAL_HW}
    assert set(zip(table[table.platform == "ground"].height,
                   table[table.platform == "ground"].width)) == {GROUND_HW}


def test_split_statistics_counts(table):
    stats = explore.split_statistics(table)
    assert list(stats.index) == ["train", "case1_query", "case1_gallery", "case2_query",
                                 "case2_gallery"]
    train = stats.loc["train"]
    assert (train.ids, train.tracklets, train.ground_tracklets, train.aerial_tracklets) == (3, 8, 5, 3)
    assert train.frames == 8 + 10 + 12 + 6 + 9 + 9 + 11 + 7
    assert (train.min_length, train.max_length) == (6, 12)
    assert train.cameras == "C0 C1 C2 C4 C5"
    assert stats.loc["case1_query", "aerial_tracklets"] == 2
    assert stats.loc["case2_query", "cameras"] == "C1"


def test_camera_statistics_every_camera_with_platform(table):
    stats = explore.camera_statistics(table)
    assert list(stats.index) == ["C0", "C1", "C2", "C3", "C4", "C5"]
    assert list(stats.platform) == ["ground"] * 4 + ["aerial"] * 2
    assert stats.loc["C4", "train"] == 2 and stats.loc["C4", "case2_gallery"] == 1
    assert stats.loc["C3"].drop(["platform", "mean_length", "mean_height", "mean_width"]).sum() == 0
    assert stats.loc["C4", "mean_height"] == AERIAL_HW[0]
    assert stats.loc["C0", "mean_length"] == pytest.approx((8 + 9 + 10) / 3, abs=0.05)


def test_attribute_distribution_tidy_with_every_code(dataset):
    distribution = explore.attribute_distribution(dataset.attributes)
    assert list(distribution.columns) == ["split", "attribute", "code", "value", "count",
                                          "fraction", "unknown"]
    per_split = sum(UNKNOWN_CODE[a] + 1 for a in ATTRIBUTES)
    assert len(distribution) == 3 * per_split
    gender = distribution[(distribution.split == "train") & (distribution.attribute == "gender")]
    assert list(gender["count"]) == [1, 1, 1]          # pid 2 -> 0, pid 1 -> 1, pid 3 unknown
    assert list(gender.unknown) == [False, False, True]
    np.testing.assert_allclose(
        distribution.groupby(["split", "attribute"])["fraction"].sum(), 1.0)
    shares = explore.unknown_shares(distribution)
    assert shares.loc["gender", "train"] == pytest.approx(1 / 3)
    assert shares.loc["age", "case1"] == 0.0
    with pytest.raises(KeyError, match="beard"):
        explore.attribute_distribution({"train": dataset.attributes["train"].drop(columns="beard")})


def test_cross_platform_identity_prefers_most_cameras(dataset):
    # pid 1 (C0 C2 C4) and pid 3 (C1 C5) are cross-platform; pid 1 has more cameras
    assert {explore.cross_platform_identity(dataset.train, seed) for seed in range(5)} == {1}
    assert explore.cross_platform_identity([t for t in dataset.train if t.pid != 1]) == 3
    with pytest.raises(ValueError, match="both ground and aerial"):
        explore.cross_platform_identity([t for t in dataset.train if t.pid == 2])


def test_identity_tracklets_ground_first_longest_per_camera(dataset):
    chosen = explore.identity_tracklets(dataset.train, 1)
    assert [t.camid for t in chosen] == [0, 2, 4]
    assert len(chosen[-1].frames) == 12  # the longer of the two C4 tracklets
    assert len(explore.identity_tracklets(dataset.train, 1, per_camera=2)) == 4
    with pytest.raises(KeyError, match="99"):
        explore.identity_tracklets(dataset.train, 99)


def test_ensure_dataset_generates_only_missing_synthetic_roots(tmp_path, monkeypatch, root):
    calls = []
    fake = types.ModuleType("xtfclip_lib.data.synth")
    fake.generate_synthetic = lambda root, num_ids, seed, **kw: calls.append((str(root), num_ids, seed))
    monkeypatch.setitem(sys.modules, "xtfclip_lib.data.synth", fake)
    monkeypatch.chdir(tmp_path)

    assert explore.ensure_dataset(root, 5, 0) == root           # present: untouched
    assert explore.ensure_dataset("data/synthetic-ag", 7, 3).as_posix() == "data/synthetic-ag"
    assert explore.ensure_dataset("./data//synthetic-ag-quick", 4, 0)  # normalised comparison
    assert calls == [("data/synthetic-ag", 7, 3), ("data/synthetic-ag-quick", 4, 0)]
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'data' / 'AG-VPReID'} not found"):
        explore.ensure_dataset("data/AG-VPReID", 5, 0)              # a user's dataset: never faked
    assert len(calls) == 2


def test_synthetic_roots_are_the_synthetic_presets_roots():
    for preset in ("tiny", "quick"):
        assert load_config(preset, None).data.root in explore.SYNTHETIC_ROOTS
    assert load_config("paper", None).data.root not in explore.SYNTHETIC_ROOTS


@pytest.fixture
def restore_logging():
    top, package = logging.getLogger(), logging.getLogger("xtfclip_lib")
    handlers, levels = list(top.handlers), (top.level, package.level)
    yield
    top.handlers[:] = handlers
    top.setLevel(levels[0])
    package.setLevel(levels[1])


def test_notebook_setup_from_another_folder(tmp_path, monkeypatch, restore_logging, capsys):
    monkeypatch.chdir(tmp_path)            # e.g. papermill called from elsewhere
    root = explore.notebook_setup()
    assert root == paths.project_root() and Path.cwd() == root
    assert (Path("pyproject.toml")).is_file()
    explore.notebook_setup()               # twice: still one handler of ours
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_xtfclip_notebook", False)]
    assert len(ours) == 1
    log = logging.getLogger("xtfclip_lib.data.dataset")
    log.info("an info line")
    log.warning("3 of 90 person ids are not in the attribute table")
    captured = capsys.readouterr()
    assert captured.out == ("WARNING xtfclip_lib.data.dataset: 3 of 90 person ids are not in the "
                            "attribute table\n")         # plain stdout text, not a stderr block
    assert captured.err == ""
    assert logging.getLogger("xtfclip_lib").isEnabledFor(logging.INFO)   # train.log keeps INFO


def test_attribute_value_names_only_for_a_synthetic_set(tmp_path, root, dataset):
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    (synthetic / "manifest.json").write_text(json.dumps({"generator": "xtfclip_lib.data.synth"}))
    names = explore.attribute_value_names(synthetic)
    assert names["gender"] == ("male", "female")
    assert explore.attribute_value_names(root) is None                  # no manifest: codes only
    distribution = explore.attribute_distribution(dataset.attributes, names)
    gender = distribution[(distribution.split == "train") & (distribution.attribute == "gender")]
    assert list(gender.value) == ["male", "female", "unknown"]
    plain = explore.attribute_distribution(dataset.attributes)
    assert list(plain[(plain.split == "train") & (plain.attribute == "gender")].value) == \
        ["0", "1", "unknown"]
