"""AG-VPReID loader, temporal and identity sampling, tracklet transforms and DataLoaders.

Fixtures are written here with PIL into tmp_path, in the layout of METHOD §1, so these tests do
not depend on the synthetic generator.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xtfclip_lib.config import load_config
from xtfclip_lib.data.attributes import ATTRIBUTES, CSV_COLUMNS, UNKNOWN_CODE
from xtfclip_lib.data.dataset import (Tracklet, attributes_for, load_agvpreid, read_attribute_csv, relabel,
                                      sort_frames, split_validation)
from xtfclip_lib.data.loader import (FrameCache, build_test_loader, build_train_loader,
                                     decode_frame, set_loader_epoch)
from xtfclip_lib.data.sampling import (DistributedIdentityBatchSampler, IdentityBatchSampler,
                                       dense_frame_indices, rrs_frame_indices, train_frame_indices)
from xtfclip_lib.data.transforms import as_video, build_test_transform, build_train_transform

H, W, T = 16, 8, 4

# pid -> cameras of its tracklets (one tracklet per entry); lengths cycle through LENGTHS.
TRAIN = {1: [0, 2, 4], 2: [1, 5], 3: [3, 4], 4: [0, 5], 5: [1]}   # pid 5: ground only
CASES = {
    "case1_aerial_to_ground": {"query": {10: [4], 11: [5]}, "gallery": {10: [0], 11: [1, 2], 12: [3]}},
    "case2_ground_to_aerial": {"query": {20: [0], 21: [2]}, "gallery": {20: [4], 21: [5], 22: [4]}},
}
LENGTHS = (3, 5, 9, 12)


def write_frame(path: Path, rng: np.random.Generator, size_hw=(H, W)) -> None:
    pixels = rng.integers(0, 256, size=(*size_hw, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_split(split_dir: Path, layout: dict[int, list[int]], rng: np.random.Generator,
                counter: list[int]) -> None:
    for pid, cams in layout.items():
        for t, cam in enumerate(cams):
            length = LENGTHS[counter[0] % len(LENGTHS)]
            counter[0] += 1
            tdir = split_dir / f"{pid:04d}" / f"{pid:04d}_C{cam}_T{t:03d}"
            tdir.mkdir(parents=True)
            for f in range(length):
                # unpadded frame numbers: F10 must sort after F9
                write_frame(tdir / f"{pid:04d}_C{cam}_T{t:03d}_F{f}.jpg", rng)


def attribute_table(pids, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = {"id": list(pids)}
    for name in ATTRIBUTES:
        rows[name] = rng.integers(0, UNKNOWN_CODE[name] + 1, size=len(pids))
    return pd.DataFrame(rows)


def make_root(tmp_path: Path) -> Path:
    """A five-split AG-VPReID root with attribute CSVs: train by name, case1 by position (other
    header names) without pid 12, case2 by name in shuffled column order."""
    root = tmp_path / "ag"
    rng = np.random.default_rng(0)
    counter = [0]
    write_split(root / "train", TRAIN, rng, counter)
    for case, sides in CASES.items():
        for side, layout in sides.items():
            write_split(root / case / side, layout, rng, counter)
    attr = root / "attributes"
    attr.mkdir()
    attribute_table(TRAIN, 1).to_csv(attr / "train.csv", index=False)
    case1 = attribute_table([10, 11], 2)
    case1.columns = ["ID"] + [f"attr_{i}" for i in range(15)]
    case1.to_csv(attr / "case1_aerial_to_ground.csv", index=False)
    case2 = attribute_table([20, 21, 22], 3)
    case2[list(reversed(CSV_COLUMNS))].to_csv(attr / "case2_ground_to_aerial.csv", index=False)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cfg():
    return load_config("quick", "x_tfclip", [
        f"data.image_size_hw=[{H}, {W}]", f"data.num_frames={T}", "data.sample_stride=2",
        "data.num_ids_per_batch=2", "data.num_tracklets_per_id=2", "data.pad=2",
        "data.num_workers=0", "eval.batch_size=3"])


def copy_root(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target


# ------------------------------------------------------------------------------------------------
# Loader round trip, relabelling, attributes


def test_load_round_trip_counts(root):
    data = load_agvpreid(root)
    assert len(data.train) == sum(len(c) for c in TRAIN.values())
    for case, key in (("case1_aerial_to_ground", "case1"), ("case2_ground_to_aerial", "case2")):
        for side in ("query", "gallery"):
            tracklets = getattr(data, f"{key}_{side}")
            layout = CASES[case][side]
            assert len(tracklets) == sum(len(c) for c in layout.values())
            assert sorted({t.pid for t in tracklets}) == sorted(layout)
            assert sorted(t.camid for t in tracklets) == sorted(c for cs in layout.values() for c in cs)
    for t in data.train:
        assert t.camid in TRAIN[t.pid]
        assert t.platform == ("aerial" if t.camid >= 4 else "ground")
        assert t.name == Path(t.frames[0]).parent.name
        assert len(t.frames) in LENGTHS
        numbers = [int(Path(f).stem.split("_F")[1]) for f in t.frames]
        assert numbers == list(range(len(t.frames)))   # natural order: F9 before F10
    assert all(t.platform == "aerial" for t in data.case1_query)
    assert all(t.platform == "ground" for t in data.case1_gallery)
    assert all(t.platform == "ground" for t in data.case2_query)
    assert all(t.platform == "aerial" for t in data.case2_gallery)


def test_sort_frames_by_frame_number_then_naturally():
    assert sort_frames(["a_C1_F10.jpg", "a_C1_F2.jpg", "a_C1_F1.jpg"]) == \
        ["a_C1_F1.jpg", "a_C1_F2.jpg", "a_C1_F10.jpg"]
    assert sort_frames(["C1_img10.jpg", "C1_img9.jpg"]) == ["C1_img9.jpg", "C1_img10.jpg"]


def test_relabel_train_ids(root):
    data = load_agvpreid(root)
    label_of = relabel(data.train)
    assert label_of == {pid: i for i, pid in enumerate(sorted(TRAIN))}
    assert {t.pid for t in data.case1_query} == {10, 11}   # test pids keep their own ids


def test_attributes_by_name_by_position_and_per_case(root):
    data = load_agvpreid(root)
    train_csv = pd.read_csv(root / "attributes" / "train.csv").set_index("id")
    pd.testing.assert_frame_equal(data.attributes["train"], train_csv[list(ATTRIBUTES)],
                                  check_dtype=False)
    case1 = attribute_table([10, 11], 2).set_index("id")    # written with other header names
    assert (data.attributes["case1"].loc[[10, 11]].to_numpy() == case1.to_numpy()).all()
    case2 = attribute_table([20, 21, 22], 3).set_index("id")  # written in reversed column order
    assert (data.attributes["case2"][list(ATTRIBUTES)].to_numpy() == case2.to_numpy()).all()
    assert 20 not in data.attributes["case1"].index          # each case reads its own table
    rows = attributes_for(data.case2_gallery, data.attributes["case2"])
    assert list(rows.columns) == list(ATTRIBUTES) and len(rows) == len(data.case2_gallery)
    for i, t in enumerate(data.case2_gallery):
        assert (rows.iloc[i].to_numpy() == case2.loc[t.pid].to_numpy()).all()


def test_missing_pid_gets_unknown_with_one_warning(root, caplog):
    with caplog.at_level(logging.WARNING, logger="xtfclip_lib.data.dataset"):
        data = load_agvpreid(root)
    assert data.attributes["case1"].loc[12].to_dict() == UNKNOWN_CODE
    warnings = [r.getMessage() for r in caplog.records if "not in the attribute table" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 3 person ids of split 'case1'" in warnings[0]
    rows = attributes_for(data.case1_gallery, data.attributes["case1"])
    pid12 = [i for i, t in enumerate(data.case1_gallery) if t.pid == 12]
    assert rows.iloc[pid12[0]].to_dict() == UNKNOWN_CODE


def test_attributes_from_query_gallery_files_or_absent(root, tmp_path, caplog):
    """The real download keeps a case's table as attributes/<case>/{query,gallery}.csv."""
    alt = copy_root(root, tmp_path)
    (alt / "attributes" / "case2_ground_to_aerial.csv").unlink()
    parts = alt / "attributes" / "case2_ground_to_aerial"
    parts.mkdir()
    table = attribute_table([20, 21, 22], 3)
    table.iloc[:2].to_csv(parts / "query.csv", index=False)
    table.iloc[[0, 1, 2]].to_csv(parts / "gallery.csv", index=False)
    loaded = load_agvpreid(alt).attributes["case2"]
    assert (loaded.to_numpy() == table.set_index("id").to_numpy()).all()
    table.assign(gender=(table["gender"] + 1) % 2).iloc[:1].to_csv(parts / "query.csv", index=False)
    with pytest.raises(ValueError, match="person id 20 has different attributes"):
        load_agvpreid(alt)
    shutil.rmtree(parts)
    with pytest.raises(FileNotFoundError, match="case2_ground_to_aerial.csv not found"):
        load_agvpreid(alt)
    with caplog.at_level(logging.WARNING, logger="xtfclip_lib.data.dataset"):
        loaded = load_agvpreid(alt, require_attributes=False).attributes["case2"]
    assert (loaded == pd.Series(UNKNOWN_CODE)).all().all() and len(loaded) == 3
    assert any("3 of 3 person ids of split 'case2'" in r.getMessage() for r in caplog.records)


def test_split_validation(root):
    train = load_agvpreid(root).train
    rest, query, gallery = split_validation(train, 2, seed=3)
    held = {t.pid for t in query}
    assert len(held) == 2 and held == {t.pid for t in gallery}
    assert 5 not in held                                     # pid 5 has no aerial tracklet
    assert all(t.platform == "aerial" for t in query) and all(t.platform == "ground" for t in gallery)
    assert held.isdisjoint(t.pid for t in rest)
    assert len(rest) + len(query) + len(gallery) == len(train)
    assert split_validation(train, 2, seed=3) == (rest, query, gallery)
    assert split_validation(train, 0, seed=3) == (train, [], [])
    with pytest.raises(ValueError, match="only 4 of 5 training identities"):
        split_validation(train, 5, seed=0)


# ------------------------------------------------------------------------------------------------
# Temporal sampling


def test_train_frame_indices_crop_stride_and_short_tracklets():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        idx = train_frame_indices(20, 4, 3, rng)
        assert (np.diff(idx) == 3).all() and idx[0] >= 0 and idx[-1] < 20
        starts.add(int(idx[0]))
    assert starts == set(range(20 - 9))                       # every start is reachable
    assert (np.diff(train_frame_indices(7, 4, 3, rng)) == 2).all()   # stride shrinks to fit
    assert train_frame_indices(3, 8, 2, rng).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("n", [4, 5, 11, 64])
def test_rrs_is_deterministic_and_covers_every_chunk(n):
    idx = rrs_frame_indices(n, T)
    assert idx.tolist() == rrs_frame_indices(n, T).tolist()
    edges = (np.arange(T + 1) * n) // T
    assert ((edges[:-1] <= idx) & (idx < edges[1:])).all()     # one frame inside each chunk
    rng = np.random.default_rng(1)
    drawn = np.stack([rrs_frame_indices(n, T, rng) for _ in range(200)])
    assert ((edges[:-1] <= drawn) & (drawn < edges[1:])).all()
    for i in range(T):                                          # random RRS reaches the whole chunk
        assert set(drawn[:, i]) == set(range(edges[i], edges[i + 1]))


@pytest.mark.parametrize("n", [1, 3, 4, 9, 12])
def test_dense_chunks(n):
    chunks = dense_frame_indices(n, T)
    assert chunks.shape == (math.ceil(n / T), T)
    assert set(chunks.ravel()) == set(range(n))
    assert (chunks.ravel()[n:] == n - 1).all()                 # padding repeats the last frame


# ------------------------------------------------------------------------------------------------
# Identity sampling


LABELS = [0] * 5 + [1] * 3 + [2] * 1 + [3] * 4 + [4] * 2 + [5] * 6


def check_pk(batch, labels, P, K):
    ids = [labels[i] for i in batch]
    assert len(batch) == P * K
    groups = [ids[i * K:(i + 1) * K] for i in range(P)]
    assert all(len(set(g)) == 1 for g in groups)               # K tracklets of one id, adjacent
    assert len({g[0] for g in groups}) == P                     # P distinct ids


def test_identity_sampler_yields_p_by_k():
    sampler = IdentityBatchSampler(LABELS, 3, 2, seed=np.random.default_rng(0))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) >= len(set(LABELS)) // 3
        for batch in batches:
            check_pk(batch, LABELS, 3, 2)
            by_id = {}
            for i in batch:
                by_id.setdefault(LABELS[i], []).append(i)
            for pid, picked in by_id.items():
                if LABELS.count(pid) >= 2:                     # without replacement when possible
                    assert len(set(picked)) == 2
    sampler.set_epoch(1)
    again = IdentityBatchSampler(LABELS, 3, 2, seed=sampler.seed)
    again.set_epoch(1)
    assert list(again) == list(sampler)
    again.set_epoch(2)
    assert list(again) != list(sampler)


def test_identity_sampler_error_names_p_and_k():
    with pytest.raises(ValueError, match=r"P=7 identities x K=2.*only 6 identities"):
        IdentityBatchSampler(LABELS, 7, 2)


def test_distributed_sampler_gives_disjoint_equal_shares():
    labels = [i // 3 for i in range(60)]                       # 20 ids x 3 tracklets
    full = IdentityBatchSampler(labels, 2, 2, seed=5)
    full.set_epoch(4)
    shares = []
    for rank in range(3):
        s = DistributedIdentityBatchSampler(labels, 2, 2, seed=5, rank=rank, world_size=3)
        s.set_epoch(4)
        shares.append([tuple(b) for b in s])
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(list(full)) // 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert set(shares[a]).isdisjoint(shares[b])
    assert sorted(b for s in shares for b in s) == sorted(tuple(b) for b in list(full)[: 3 * len(shares[0])])


# ------------------------------------------------------------------------------------------------
# Transforms and loaders


def with_data(cfg, **changes):
    return replace(cfg, data=replace(cfg.data, **changes))


def test_train_augmentation_is_identical_across_frames(cfg):
    rng = np.random.default_rng(0)
    frame = torch.from_numpy(rng.integers(0, 256, size=(3, H, W), dtype=np.uint8))
    frames = frame.expand(T, 3, H, W).contiguous()            # T copies of one image
    plain = build_test_transform(cfg.data)(as_video(frames))[0]
    transform = build_train_transform(with_data(cfg, erasing_p=1.0).data)
    torch.manual_seed(0)
    for _ in range(20):
        clip = transform(as_video(frames))
        assert clip.shape == (T, 3, H, W) and clip.dtype == torch.float32
        for t in range(1, T):
            assert torch.equal(clip[t], clip[0])                # same flip, crop and erased box
        assert not torch.equal(clip[0], plain)
    flip_only = build_train_transform(with_data(cfg, pad=0, erasing_p=0.0).data)
    outcomes = []
    for _ in range(20):
        clip = flip_only(as_video(frames))
        assert all(torch.equal(clip[t], clip[0]) for t in range(T))
        assert torch.equal(clip[0], plain) or torch.equal(clip[0], plain.flip(-1))
        outcomes.append(torch.equal(clip[0], plain))
    assert 0 < sum(outcomes) < 20                               # both flipped and plain clips


def test_loader_augments_identical_frames_identically(root, cfg):
    frame = str(sorted((root / "train").rglob("*.jpg"))[0])
    tracklets = [Tracklet(f"t{i}", (frame,) * 6, pid=i % 2, camid=0, platform="ground")
                 for i in range(4)]
    loader = build_train_loader(with_data(cfg, erasing_p=1.0), tracklets, {0: 0, 1: 1}, seed=0)
    for _ in range(3):
        for batch in loader:
            clips = batch["clips"]                              # (B, T, 3, H, W)
            assert torch.equal(clips, clips[:, :1].expand_as(clips))
            assert not torch.equal(clips[0], clips[1])          # each sample its own augmentation


def test_train_loader_batches_are_pk_and_reproducible(root, cfg):
    data = load_agvpreid(root)
    label_of = relabel(data.train)
    loader = build_train_loader(cfg, data.train, label_of, seed=7)
    set_loader_epoch(loader, 0)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    for batch in batches:
        assert batch["clips"].shape == (4, T, 3, H, W) and batch["clips"].dtype == torch.float32
        assert batch["pids"].dtype == torch.long and batch["camids"].dtype == torch.long
        assert batch["frame_idx"].shape == (4, T) and batch["frame_idx"].dtype == torch.long
        pids = batch["pids"].tolist()
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
        assert set(pids) <= set(label_of.values())
    replay = build_train_loader(cfg, data.train, label_of, seed=7)
    set_loader_epoch(replay, 0)
    for a, b in zip(batches, replay):
        for key in a:
            assert torch.equal(a[key], b[key])
    other = build_train_loader(cfg, data.train, label_of, seed=8)
    assert not all(torch.equal(a["clips"], b["clips"]) for a, b in zip(batches, other))


def test_train_loader_epochs_advance_and_ignore_worker_count(root, cfg):
    data = load_agvpreid(root)
    label_of = relabel(data.train)
    in_process = build_train_loader(cfg, data.train, label_of, seed=3)
    with_worker = build_train_loader(with_data(cfg, num_workers=1, cache_frames=False),
                                     data.train, label_of, seed=3)
    epochs = [[list(loader) for _ in range(2)] for loader in (in_process, with_worker)]
    for a_epoch, b_epoch in zip(*epochs):                       # same batches, epoch by epoch
        assert len(a_epoch) == len(b_epoch)
        for a, b in zip(a_epoch, b_epoch):
            assert all(torch.equal(a[key], b[key]) for key in a)
    first, second = epochs[0]                                   # each pass is a new epoch
    assert not all(torch.equal(a["clips"], b["clips"]) for a, b in zip(first, second))
    set_loader_epoch(in_process, 1)
    assert all(torch.equal(a["clips"], b["clips"]) for a, b in zip(in_process, second))


def test_test_loader_rrs_dense_and_flip(root, cfg):
    data = load_agvpreid(root)
    tracklets = data.case1_gallery
    batches = list(build_test_loader(cfg, tracklets))
    assert sum(len(b["index"]) for b in batches) == len(tracklets)
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(tracklets)))
    assert batches[0]["clips"].shape == (3, 1, T, 3, H, W)
    again = list(build_test_loader(cfg, tracklets))
    assert torch.equal(batches[0]["clips"], again[0]["clips"])
    flipped = list(build_test_loader(cfg, tracklets, flip=True))
    assert torch.equal(flipped[0]["clips"], batches[0]["clips"].flip(-1))
    dense_cfg = with_data(cfg, test_sampling="dense")
    for batch in build_test_loader(dense_cfg, tracklets):
        n = len(tracklets[int(batch["index"])].frames)
        assert batch["clips"].shape == (1, math.ceil(n / T), T, 3, H, W)
        assert int(batch["camids"]) == tracklets[int(batch["index"])].camid


def test_frame_cache_decodes_once(root):
    frame = sorted((root / "train").rglob("*.jpg"))[0]
    cache = FrameCache((H, W))
    first = cache.get(str(frame))
    second = cache.get(str(frame))
    assert first is second and first.shape == (H, W, 3) and first.dtype == np.uint8
    assert (cache.hits, cache.misses, len(cache.frames)) == (1, 1, 1)
    assert decode_frame(str(frame), (8, 4)).shape == (8, 4, 3)       # resized at decode


def test_frame_cache_never_serves_a_rewritten_file(tmp_path):
    path = tmp_path / "0001_C0_T000_F0.jpg"
    rng = np.random.default_rng(0)
    write_frame(path, rng)
    cache = FrameCache((H, W))
    old = cache.get(str(path))
    write_frame(path, rng)                                      # regenerated in place
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    new = cache.get(str(path))
    assert cache.misses == 2 and not np.array_equal(old, new)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_missing_root_says_how_to_generate(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*METHOD.md §1.*xtfclip_lib synth --root"):
        load_agvpreid(tmp_path / "nowhere")


def test_missing_split_folder(root, tmp_path):
    bad = copy_root(root, tmp_path)
    shutil.rmtree(bad / "case2_ground_to_aerial" / "query")
    with pytest.raises(FileNotFoundError, match="case2_ground_to_aerial/query not found"):
        load_agvpreid(bad)


def test_non_integer_pid_folder(root, tmp_path):
    bad = copy_root(root, tmp_path)
    (bad / "train" / "0001").rename(bad / "train" / "person1")
    with pytest.raises(ValueError, match="person1.*not an integer"):
        load_agvpreid(bad)


def test_empty_tracklet_folder(root, tmp_path):
    bad = copy_root(root, tmp_path)
    (bad / "train" / "0002" / "0002_C3_T009").mkdir()
    with pytest.raises(ValueError, match="0002_C3_T009: empty tracklet folder"):
        load_agvpreid(bad)


def test_frame_name_without_camera_id(root, tmp_path):
    bad = copy_root(root, tmp_path)
    tdir = next((bad / "train" / "0003").iterdir())
    shutil.copy(next(tdir.iterdir()), tdir / "frame_F99.jpg")
    with pytest.raises(ValueError, match="frame_F99.jpg.*no camera id"):
        load_agvpreid(bad)


def test_mixed_and_unknown_cameras(root, tmp_path):
    bad = copy_root(root, tmp_path)
    tdir = bad / "train" / "0003" / "0003_C3_T000"
    odd = tdir / "0003_C9_T000_F99.jpg"
    shutil.copy(tdir / "0003_C3_T000_F0.jpg", odd)
    with pytest.raises(ValueError, match="0003_C3_T000: frames of one tracklet come from different cameras"):
        load_agvpreid(bad)
    odd.unlink()
    for f in list(tdir.iterdir()):
        f.rename(tdir / f.name.replace("_C3_", "_C7_"))
    with pytest.raises(ValueError, match="0003_C7_T000_F0.jpg: camera id C7 is not an AG-VPReID camera"):
        load_agvpreid(bad)


def test_corrupt_jpeg_names_the_file(root, cfg, tmp_path):
    bad = copy_root(root, tmp_path)
    data = load_agvpreid(bad)
    first = data.case1_query[0]
    victim = Path(first.frames[int(rrs_frame_indices(len(first.frames), T)[0])])
    victim.write_bytes(victim.read_bytes()[:40])               # truncated JPEG
    with pytest.raises(ValueError, match=f"{victim.name}: cannot decode"):
        decode_frame(str(victim), (H, W))
    with pytest.raises(ValueError, match=victim.name):
        list(build_test_loader(cfg, data.case1_query[:1]))
    victim.write_text("not a jpeg")
    with pytest.raises(ValueError, match=victim.name):
        decode_frame(str(victim), (H, W))


@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop(columns=["glasses"]), r"missing columns: \['glasses'\]"),
    (lambda df: df.assign(notes="x"), r"unexpected columns: \['notes'\]"),
    (lambda df: df.assign(age=df["age"] + 100), r"'age' row 2 holds code 1\d\d"),
    (lambda df: df.assign(gender="male"), r"'gender' row 2 holds 'male'"),
])
def test_bad_attribute_csv(tmp_path, change, message):
    path = tmp_path / "train.csv"
    change(attribute_table([1, 2, 3], 0)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=f"train.csv.*{message}"):
        read_attribute_csv(path)


def test_csv_with_misplaced_names_is_rejected(tmp_path):
    path = tmp_path / "case1.csv"
    df = attribute_table([1, 2], 0)
    columns = list(df.columns)
    columns[1], columns[2], columns[3] = columns[2], columns[1], "size"
    df.columns = columns
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"case1.csv: columns \['age', 'gender'\]"):
        read_attribute_csv(path)
