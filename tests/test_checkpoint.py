"""Atomic, pickle-free checkpoints (METHOD §7: checkpoints unpickled, train/test size mismatch)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from xtfclip_lib.engine import checkpoint as ckpt
from xtfclip_lib.config import load_config, to_dict


def _state(value: float) -> dict:
    cfg = load_config("quick")
    return {"model": {"weight": torch.full((3, 2), value)}, "epoch": 1, "best_metric": 0.5,
            "config": to_dict(cfg), "meta": ckpt.checkpoint_meta(cfg, num_classes=20),
            "rng": ckpt.rng_state()}


def test_round_trip_holds_config_meta_and_rng(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "last.pt", _state(1.0))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    state = ckpt.load_checkpoint(path)
    ckpt.set_rng_state(state["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2]
    torch.testing.assert_close(expected[2], again[2])
    torch.testing.assert_close(state["model"]["weight"], torch.ones(3, 2))
    assert state["config"] == to_dict(load_config("quick"))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temp file left behind


class Payload:
    """Any class instance: unpickling it would run arbitrary code."""


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pt contains pickled Python objects"):
        ckpt.load_checkpoint(path)


def test_truncated_checkpoint_clear_error_previous_kept(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, _state(1.0))
    good_bytes = path.read_bytes()

    # A crash in the middle of writing the next checkpoint: half a file, then the process dies.
    real_save = torch.save

    def dying_save(obj, handle):
        real_save(obj, handle)
        handle.seek(len(good_bytes) // 2)
        handle.truncate()
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == good_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    torch.testing.assert_close(ckpt.load_checkpoint(path)["model"]["weight"], torch.ones(3, 2))

    # A file truncated by other means is reported by name, not as a zip-reader traceback.
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good_bytes[: len(good_bytes) // 2])
    with pytest.raises(ValueError, match=r"broken\.pt is truncated or corrupt"):
        ckpt.load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_size_mismatch_names_both_sizes():
    cfg = load_config("quick")
    meta = ckpt.checkpoint_meta(cfg, num_classes=20)
    ckpt.check_compatible(meta, cfg, "run/best.pt", num_classes=20)
    other = load_config("quick", overrides=["data.image_size_hw=[96, 48]"])
    with pytest.raises(ValueError, match=r"\[96, 48\].*\[64, 32\]"):
        ckpt.check_compatible(meta, other, "run/best.pt")


def test_config_differences_lists_dotted_keys():
    a = to_dict(load_config("quick"))
    b = to_dict(load_config("quick", overrides=["train.epochs=3", "features.flip_tta=false"]))
    assert ckpt.config_differences(a, b) == ["features.flip_tta: True -> False",
                                             "train.epochs: 1 -> 3"]


def test_a_killed_save_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    from xtfclip_lib.engine.checkpoint import remove_stale_temporaries

    (tmp_path / "last.pt").write_bytes(b"previous")
    leftover = tmp_path / ".last.pt.abc123.tmp"            # what a kill during save_checkpoint leaves
    leftover.write_bytes(b"partial")
    other = tmp_path / "notes.tmp"                          # not a checkpoint temporary: kept
    other.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [leftover]
    assert not leftover.exists() and other.exists() and (tmp_path / "last.pt").read_bytes() == b"previous"


def test_atomic_write_publishes_whole_files_or_nothing(tmp_path):
    from xtfclip_lib.utils import files

    target = tmp_path / "deep" / "report.md"
    files.atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"

    def half_then_fail(handle):
        handle.write(b"second, half writ")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        files.atomic_write(target, half_then_fail)
    assert target.read_text() == "first\n"                 # the old file, untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]   # no temporary left
    files.atomic_write_bytes(target, "é\n".encode())
    assert target.read_text(encoding="utf-8") == "é\n"
