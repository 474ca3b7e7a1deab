"""The training engine, run folders, feature caches and the evaluation protocol (issue 5).

Everything runs on the `quick` preset (a micro ViT with random weights) on a small synthetic set.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from xtfclip_lib.engine import checkpoint as ckpt
from xtfclip_lib.engine import loop as engine
from xtfclip_lib.engine import cache, inference, protocol, run
from xtfclip_lib.__main__ import main as cli_main
from xtfclip_lib.config import load_config
from xtfclip_lib.data.attributes import ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.data.dataset import Tracklet, load_agvpreid, relabel, split_validation
from xtfclip_lib.data.loader import build_train_loader, set_loader_epoch
from xtfclip_lib.engine.distributed import DistEnv
from xtfclip_lib.losses import Criterion
from xtfclip_lib.model import build_model
from xtfclip_lib.engine.optim import EpochSchedule, build_optimizer

TIMING_KEYS = ("epoch_s", "tracklets_per_s")


pytestmark = pytest.mark.usefixtures("one_thread")


def quick_cfg(root, *overrides):
    return load_config("quick", "x_tfclip", [f"data.root={root}", "train.num_threads=1", *overrides])


def read_rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(row):
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def straight_run(quick_root, tmp_path_factory):
    """Two epochs without interruption: the reference of the resume test and a finished run."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    summary = engine.train(quick_cfg(quick_root, "train.epochs=2"), out)
    return out, summary


# --------------------------------------------------------------------------------------------
# Training

def test_one_quick_epoch_lowers_the_loss(quick_root):
    cfg = quick_cfg(quick_root)
    engine.seed_everything(0)
    data = load_agvpreid(quick_root)
    train_set, _, _ = split_validation(data.train, cfg.data.num_val_ids, cfg.train.seed)
    label_of = relabel(train_set)
    model = build_model(cfg, len(label_of))
    model.set_memory(inference.build_clip_memory(model, train_set, label_of, cfg, torch.device("cpu")))
    criterion = Criterion(cfg.loss, cfg.features, len(label_of), cfg.data.num_frames)
    optimizer = build_optimizer(model, cfg.train)
    EpochSchedule(optimizer, cfg.train).set_epoch(0)
    loader = build_train_loader(cfg, train_set, label_of)

    def epoch0_loss() -> float:
        """Mean loss over the batches of epoch 0 (same clips, same augmentation every time)."""
        set_loader_epoch(loader, 0)
        model.train()
        criterion.eval()          # measuring must not move the label-smoothing state
        with torch.no_grad():
            losses = [criterion(model(b["clips"], b["camids"]), b["pids"])[0].item() for b in loader]
        return float(np.mean(losses))

    before = epoch0_loss()
    set_loader_epoch(loader, 0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = engine.train_one_epoch(model, criterion, loader, optimizer, scaler, cfg, DistEnv(), None, 0)
    after = epoch0_loss()
    assert stats["steps"] == len(loader) > 0 and stats["skipped_steps"] == 0
    assert stats["tracklets_per_s"] > 0
    assert after < before - 0.1, (before, after)


def test_run_folder_holds_before_and_after(straight_run):
    out, summary = straight_run
    for name in ("config.yaml", "train.log", "metrics.csv", "metrics.jsonl", "last.pt", "best.pt",
                 "test_metrics.csv", "test_metrics_before.csv", "summary.json"):
        assert (out / name).is_file(), name
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "id_img", "i2t", "frame", "triplet_tmd", "acc_img", "lr", "tracklets_per_s",
                "val_R1", "val_mAP"):
        assert all(key in r and math.isfinite(r[key]) for r in rows), key
    assert len(pd.read_csv(out / "metrics.csv")) == 2
    after, before = pd.read_csv(out / "test_metrics.csv"), pd.read_csv(out / "test_metrics_before.csv")
    assert list(after["case"]) == list(before["case"]) == ["aerial_to_ground", "ground_to_aerial", "overall"]
    assert set(after["selected_on"]) == {"val"} and set(before["selected_on"]) == {"untrained"}
    assert summary["selected_on"] == "val" and summary["checkpoint"] == "best.pt"
    assert summary["test"] == json.loads((out / "summary.json").read_text())["test"]
    assert len(summary["test_before"]) == 3
    # a finished run is not overwritten unless asked, an unfinished one not restarted by accident
    with pytest.raises(ValueError, match="finished run"):
        engine.train(quick_cfg(out.parent.parent / "unused"), out)


def test_kill_and_resume_reproduces_the_uninterrupted_run(quick_root, straight_run, tmp_path, monkeypatch):
    reference, reference_summary = straight_run
    cfg = quick_cfg(quick_root, "train.epochs=2")
    out = tmp_path / "killed"
    real_save = ckpt.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if path.name == "last.pt":
            raise KeyboardInterrupt("killed after the first epoch's checkpoint")
    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, out)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not (out / "summary.json").exists()
    with pytest.raises(ValueError, match="unfinished run"):
        engine.train(cfg, out)
    with pytest.raises(ValueError, match="train.base_lr"):
        engine.train(replace(cfg, train=replace(cfg.train, base_lr=1.0)), out, resume=True)

    summary = engine.train(cfg, out, resume=True)
    assert [without_timing(r) for r in read_rows(out)] == [without_timing(r) for r in read_rows(reference)]
    assert summary["test"] == reference_summary["test"]
    assert summary["test_before"] == reference_summary["test_before"]
    assert summary["features_key"] == reference_summary["features_key"]
    for name in ("last.pt", "best.pt"):
        got, want = ckpt.load_checkpoint(out / name)["model"], ckpt.load_checkpoint(reference / name)["model"]
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name


def test_nonfinite_losses_are_skipped_then_stop(quick_root, tmp_path, monkeypatch):
    calls = {"n": 0}

    class FlakyCriterion(Criterion):
        """NaN loss on chosen calls."""
        bad_calls: set = set()

        def forward(self, out, labels):
            calls["n"] += 1
            total, terms = super().forward(out, labels)
            return (total * float("nan"), terms) if calls["n"] in self.bad_calls else (total, terms)

    monkeypatch.setattr(engine, "Criterion", FlakyCriterion)
    FlakyCriterion.bad_calls = {1, 3}
    cfg = quick_cfg(quick_root, "train.max_nonfinite_steps=2", "train.select_on=test")
    summary = engine.train(cfg, tmp_path / "flaky")
    row = read_rows(tmp_path / "flaky")[0]
    assert row["skipped_steps"] == 2 and math.isfinite(row["loss"])
    # selecting on the test set is allowed but every output says so
    assert summary["selected_on"] == "test" and "test_R1" in row and "val_R1" not in row
    assert set(pd.read_csv(tmp_path / "flaky" / "test_metrics.csv")["selected_on"]) == {"test"}

    calls["n"] = 0
    FlakyCriterion.bad_calls = {1, 2}
    with pytest.raises(RuntimeError, match=r"2 non-finite losses in a row.*max_nonfinite_steps=2"):
        engine.train(cfg, tmp_path / "diverged")


# --------------------------------------------------------------------------------------------
# Evaluation of a run folder, feature cache, command line

def test_evaluate_reuses_features_and_cli(straight_run, monkeypatch, capsys, tmp_path):
    out, summary = straight_run
    saved = pd.read_csv(out / "test_metrics.csv").drop(columns="selected_on")

    def no_encoding(*args, **kwargs):
        raise AssertionError("features were recomputed although the cache key matched")
    monkeypatch.setattr(run, "encode_lists", no_encoding)
    table = run.evaluate_run(out)
    pd.testing.assert_frame_equal(table[saved.columns], saved, check_dtype=False)
    unmasked = run.evaluate_run(out, mask=False)          # a variant, same features
    assert list(unmasked["case"]) == list(saved["case"])

    assert cli_main(["evaluate", "--run", str(out), "--no-mask", "--rerank"]) == 0
    printed = capsys.readouterr().out
    assert "aerial_to_ground" in printed and "overall" in printed and "R1" in printed

    submission = tmp_path / "submission.csv"
    assert cli_main(["submit", "--run", str(out), "--out", str(submission)]) == 0
    rows = pd.read_csv(submission)
    assert list(rows.columns) == ["row_id", "query_tracklet", "gallery_tracklets"]
    sets = run.run_features(out).sets
    assert len(rows) == len(sets["case1_query"].names) + len(sets["case2_query"].names)
    assert list(rows["query_tracklet"][: len(sets["case1_query"].names)]) == sets["case1_query"].names


def test_feature_key_changes_with_checkpoint_config_and_data(quick_root):
    cfg = quick_cfg(quick_root)
    key = cache.features_key("ckpt-a", cfg, "data-a")
    assert key == cache.features_key("ckpt-a", quick_cfg(quick_root), "data-a")
    assert key != cache.features_key("ckpt-b", cfg, "data-a")
    assert key != cache.features_key("ckpt-a", cfg, "data-b")
    assert key != cache.features_key("ckpt-a", quick_cfg(quick_root, "features.flip_tta=false"), "data-a")
    assert key != cache.features_key("ckpt-a", quick_cfg(quick_root, "data.test_sampling=dense"), "data-a")
    # options that act after the features share them
    assert key == cache.features_key("ckpt-a", quick_cfg(quick_root, "features.soft_biometric_mask=false",
                                                             "eval.rerank=true"), "data-a")
    tracklets = load_agvpreid(quick_root).case1_query
    assert cache.data_manifest_digest(tracklets) != cache.data_manifest_digest(tracklets[1:])


def test_features_round_trip_without_pickle(tmp_path):
    fs = inference.FeatureSet(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([1, 2, 3]),
                              np.array([0, 4, 5]), ["a", "b", "c"])
    cache.save_features(tmp_path, "test", "k1", {"case1_query": fs})
    loaded = cache.load_features(tmp_path, "test", "k1")["case1_query"]
    np.testing.assert_array_equal(loaded.features, fs.features)
    assert loaded.names == fs.names and list(loaded.pids) == [1, 2, 3]
    assert cache.load_features(tmp_path, "test", "k2") is None       # another key: not reused


@pytest.mark.parametrize("damage", ["truncated", "empty", "object_array"])
def test_a_damaged_feature_cache_is_a_cache_miss_naming_the_file(tmp_path, caplog, damage):
    fs = inference.FeatureSet(np.ones((3, 2), np.float32), np.array([1, 2, 3]), np.array([0, 4, 5]),
                              ["a", "b", "c"])
    path = cache.save_features(tmp_path, "test", "k1", {"case1_query": fs})
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, key=np.array("k1"), case1_query__features=np.array([{"x": 1}], dtype=object))
    with caplog.at_level("WARNING"):
        assert cache.load_features(tmp_path, "test", "k1") is None
    assert str(path) in caplog.text and "cache miss" in caplog.text
    assert not list(tmp_path.glob(".*tmp*"))        # the atomic write left no temporary behind


def test_extract_features_dense_rrs_and_flip(quick_root):
    cfg = quick_cfg(quick_root)
    tracklets = load_agvpreid(quick_root).case1_query[:3]
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4)
    device = torch.device("cpu")
    plain = inference.extract_features(model, tracklets, cfg, device, flip_tta=False)
    flipped = inference.encode_tracklets(model, tracklets, cfg, device, flip=True)
    both = inference.extract_features(model, tracklets, cfg, device, flip_tta=True)
    np.testing.assert_allclose(both.features, (plain.features + flipped.numpy()) / 2, rtol=1e-5, atol=1e-6)
    dense_cfg = replace(cfg, data=replace(cfg.data, test_sampling="dense"))
    dense = inference.extract_features(model, tracklets, dense_cfg, device, flip_tta=False)
    assert plain.features.shape == dense.features.shape == (3, 2 * 64 + 64)
    assert not np.allclose(plain.features, dense.features)
    assert plain.names == [t.name for t in tracklets] and list(plain.pids) == [t.pid for t in tracklets]


# --------------------------------------------------------------------------------------------
# The protocol: the mask enters before the metrics, each case reads its own table (METHOD §7)

def _attributes(rows: dict[int, dict[str, int]]) -> pd.DataFrame:
    table = pd.DataFrame([{**UNKNOWN_CODE, **codes} for codes in rows.values()], index=list(rows))
    table.index.name = "id"
    return table[list(ATTRIBUTES)]


def test_mask_enters_before_metrics_with_each_cases_own_table():
    cfg = load_config("quick", "x_tfclip")
    track = lambda name, pid, cam: Tracklet(name, ("f.jpg",), pid, cam, "aerial" if cam >= 4 else "ground")
    # query pid 1 sits nearest to gallery pid 2, its true match second
    q_feat = np.array([[1.0, 0.0]], np.float32)
    g_feat = np.array([[0.9, 0.1], [0.7, 0.3]], np.float32)
    lists = {"q1": [track("q", 1, 4)], "g1": [track("g2", 2, 0), track("g1", 1, 1)],
             "q2": [track("q", 1, 4)], "g2": [track("g2", 2, 0), track("g1", 1, 1)]}
    sets = {"q1": inference.FeatureSet.of(q_feat, lists["q1"]), "g1": inference.FeatureSet.of(g_feat, lists["g1"]),
            "q2": inference.FeatureSet.of(q_feat, lists["q2"]), "g2": inference.FeatureSet.of(g_feat, lists["g2"])}
    differ = _attributes({1: {"gender": 0}, 2: {"gender": 1}})       # case 1: genders known, differ
    unknown = _attributes({1: {"gender": 0}, 2: {}})                  # case 2: pid 2 unknown
    cases = [protocol.RetrievalCase("aerial_to_ground", "q1", "g1", differ),
             protocol.RetrievalCase("ground_to_aerial", "q2", "g2", unknown)]
    masked = protocol.score_cases(sets, lists, cases, cfg, mask=True, rerank=False).set_index("case")
    plain = protocol.score_cases(sets, lists, cases, cfg, mask=False, rerank=False).set_index("case")
    assert plain.loc["aerial_to_ground", "R1"] == 0.0 and plain.loc["ground_to_aerial", "R1"] == 0.0
    assert masked.loc["aerial_to_ground", "R1"] == 1.0      # the penalty moved the impostor down
    assert masked.loc["ground_to_aerial", "R1"] == 0.0      # unknown code: no penalty in case 2
    distmats = protocol.case_distmats(sets, lists, cases, cfg, mask=True)
    assert distmats["aerial_to_ground"][0, 0] > 100 > distmats["ground_to_aerial"][0, 0]
