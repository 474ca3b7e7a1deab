"""Tiny-CLIP pretraining: captions from attributes, colours from pixels, training, checkpoint, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xtfclip_lib.__main__ import main
from xtfclip_lib.config import load_config
from xtfclip_lib.data.attributes import ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.data.dataset import Tracklet
from xtfclip_lib.data import ATTRIBUTE_VALUES, generate_synthetic
from xtfclip_lib.model import build_model, resize_position_embedding
from xtfclip_lib.pretrain import PretrainConfig, caption_for, make_captions, pretrain_tiny_clip
from xtfclip_lib.pretrain.captions import ATTRIBUTE_WORDS, _token_counter
from xtfclip_lib.pretrain.colours import clothing_colours
from xtfclip_lib.pretrain.evaluate import feature_spread

UNKNOWN = dict(UNKNOWN_CODE)
# A woman aged 18-24 in a jacket and jeans with a backpack; everything else unknown.
WOMAN = {**UNKNOWN, "gender": 1, "age": 2, "upper_clothing": 6, "lower_clothing": 1, "accessories": 1}


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ag"
    generate_synthetic(root, num_ids=12, seed=0, min_frames=8, max_frames=10, test_fraction=1 / 3,
                       workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def pretrained(tiny_set, tmp_path_factory, one_thread) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    metrics = pretrain_tiny_clip(tiny_set, out, PretrainConfig(steps=10, batch_size=6, lr=2e-3, seed=0),
                                 progress=False)
    return out, metrics


# ------------------------------------------------------------------------------------------------
# Captions


def test_word_tables_follow_the_synthetic_codes():
    for name in ATTRIBUTES:
        assert len(ATTRIBUTE_WORDS[name]) == UNKNOWN_CODE[name] == len(ATTRIBUTE_VALUES[name])
    assert ATTRIBUTE_VALUES["upper_clothing"][6] == "jacket" and ATTRIBUTE_WORDS["upper_clothing"][6] == "jacket"
    assert ATTRIBUTE_VALUES["lower_clothing"][1] == "jeans" and ATTRIBUTE_WORDS["lower_clothing"][1] == "jeans"


def test_caption_names_person_clothes_colours_and_platform():
    caption = caption_for(WOMAN, 4, ("red", "blue"))
    assert caption == "a young woman in a red jacket and blue jeans carrying a backpack, seen from a drone"
    assert caption_for(WOMAN, 5, ("red", "blue")) == caption
    assert caption_for(WOMAN, 0, ("red", "blue")).endswith(", seen from a CCTV camera")
    assert caption_for(WOMAN, 1, ("red", "blue")).endswith(", seen from a CCTV camera")
    assert caption_for(WOMAN, 3, ("red", "blue")).endswith(", seen from a body-worn camera")
    # a pandas row (as read from the attribute table) gives the same sentence
    assert caption_for(pd.Series(WOMAN), 4, ("red", "blue")) == caption


def test_caption_skips_unknown_codes():
    assert caption_for(UNKNOWN, 4) == "a person, seen from a drone"
    assert caption_for({}, 2) == "a person, seen from a body-worn camera"
    unknown_type = caption_for({**WOMAN, "upper_clothing": UNKNOWN_CODE["upper_clothing"],
                                "lower_clothing": UNKNOWN_CODE["lower_clothing"]}, 4, (None, "grey"))
    assert unknown_type == "a young woman in grey trousers carrying a backpack, seen from a drone"
    hair = caption_for({**UNKNOWN, "gender": 0, "hairstyle": 3}, 0)
    assert hair == "a man with long hair, seen from a CCTV camera"
    for text in (unknown_type, hair):
        assert "None" not in text and "unknown" not in text


def test_caption_children_dresses_and_articles():
    girl = {**UNKNOWN, "gender": 1, "age": 0, "upper_clothing": 9, "lower_clothing": 8}
    assert caption_for(girl, 2, ("pink", "pink")) == "a girl in a pink dress, seen from a body-worn camera"
    elder = {**UNKNOWN, "gender": 0, "age": 7, "accessories": 6, "glasses": 1, "beard": 1}
    assert caption_for(elder, 4) == "an elderly man with a beard and glasses carrying an umbrella, seen from a drone"


def test_caption_rejects_bad_codes_and_cameras():
    with pytest.raises(ValueError, match="'gender' has code 5"):
        caption_for({**UNKNOWN, "gender": 5}, 4)
    with pytest.raises(ValueError, match="camid=7"):
        caption_for(WOMAN, 7)
    with pytest.raises(KeyError, match="omit"):
        caption_for(WOMAN, 4, omit={"upper_clothing"})


def test_long_captions_drop_the_least_identifying_phrases_to_fit():
    everything = {name: 1 for name in ATTRIBUTES}
    everything.update(age=4, height=3, hairstyle=3, head_accessories=2, feet=2, accessories=5)
    full = caption_for(everything, 2, ("navy", "beige"), context_length=None)
    fitted = caption_for(everything, 2, ("navy", "beige"))
    count = _token_counter()
    assert count(full) + 2 > 32 >= count(fitted) + 2
    for kept in ("navy long-sleeved shirt", "beige jeans", "carrying a suitcase", "woman",
                 "seen from a body-worn camera"):
        assert kept in fitted
    assert "a beard" not in fitted and "boots" not in fitted     # dropped first


def test_clothing_colours_read_torso_and_hips():
    frames = np.full((3, 64, 64, 3), 128, np.uint8)                  # grey background
    frames[:, 14:30, 20:44] = (176, 30, 36)                          # torso: red
    frames[:, 32:42, 22:42] = (40, 78, 160)                          # hips: blue
    frames[0, :, :] = (240, 240, 240)                                # one washed-out frame is outvoted
    assert clothing_colours(frames) == ("red", "blue")
    assert clothing_colours(np.zeros((0, 64, 64, 3), np.uint8)) == (None, None)


def test_make_captions_one_per_tracklet():
    tracklets = [Tracklet("a", ("a.jpg",), 3, 4, "aerial"), Tracklet("b", ("b.jpg",), 3, 0, "ground"),
                 Tracklet("c", ("c.jpg",), 9, 2, "ground")]
    table = pd.DataFrame([WOMAN], index=pd.Index([3], name="id"))[list(ATTRIBUTES)]
    captions = make_captions(tracklets, table, {3: ("red", "blue"), 9: ("black", None)})
    assert captions[0] == caption_for(WOMAN, 4, ("red", "blue"))
    assert captions[1] == caption_for(WOMAN, 0, ("red", "blue"))
    assert captions[2] == "a person in a black top, seen from a body-worn camera"   # pid 9 not in table


# ------------------------------------------------------------------------------------------------
# Pretraining


def test_pretraining_lowers_the_contrastive_loss(pretrained):
    out, metrics = pretrained
    assert metrics["steps"] == 10
    assert metrics["probe_loss_after"] < metrics["probe_loss_before"] - 0.05
    assert len(metrics["loss_curve"]) == 10 and metrics["loss_curve"][-1][0] == 10
    for key in ("spread_before", "spread_after"):
        spread = metrics[key]
        assert -1 <= spread["mean_cosine"] <= 1 and 0 <= spread["varying_energy"] <= 1
        assert -1 <= spread["mean_cosine_proj"] <= 1 and spread["num"] == metrics["num_train_tracklets"]
    for key in ("zero_shot_before", "zero_shot_after"):
        zero_shot = metrics[key]
        assert 0 <= zero_shot["top1"] <= 1 and zero_shot["num_ids"] == 2
        assert zero_shot["chance"] == pytest.approx(0.5)


def test_pretraining_uses_training_identities_only(pretrained, tiny_set):
    _, metrics = pretrained
    manifest = json.loads((tiny_set / "manifest.json").read_text())
    train_ids = set(manifest["splits"]["train"])
    assert set(metrics["held_out_ids"]) < train_ids
    assert metrics["num_train_ids"] == len(train_ids) - len(metrics["held_out_ids"])


def test_checkpoint_and_sidecar(pretrained, tiny_set):
    out, metrics = pretrained
    checkpoint = torch.load(out, map_location="cpu", weights_only=True)
    assert checkpoint["arch"] == "tiny-clip" and checkpoint["image_size"] == 64
    state = checkpoint["state_dict"]
    assert state["visual.positional_embedding"].shape == (1 + 8 * 8, 128)
    assert "token_embedding.weight" in state and "logit_scale" in state
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["arch"] == "tiny-clip" and sidecar["image_size"] == 64
    assert sidecar["data"]["manifest_digest"] == json.loads((tiny_set / "manifest.json").read_text())["digest"]
    assert sidecar["data"]["data_digest"].startswith("sha256:")
    assert sidecar["metrics"]["probe_loss_after"] == metrics["probe_loss_after"]
    assert not list(out.parent.glob(".*partial*"))


def test_checkpoint_loads_into_the_reid_backbone_at_the_tiny_input(pretrained, tiny_set):
    out, _ = pretrained
    cfg = load_config("tiny", "x_tfclip", [("data.root", str(tiny_set)), ("model.pretrained", str(out))])
    model = build_model(cfg, num_classes=4)
    source = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    loaded = model.backbone.visual.positional_embedding.detach()
    grid = (cfg.data.image_size_hw[0] // 8, cfg.data.image_size_hw[1] // 8)
    assert grid[0] != grid[1] and loaded.shape == (1 + grid[0] * grid[1], 128)
    torch.testing.assert_close(loaded[0], source["visual.positional_embedding"][0])
    torch.testing.assert_close(loaded, resize_position_embedding(source["visual.positional_embedding"],
                                                                 grid, "bicubic"))
    torch.testing.assert_close(model.backbone.visual.conv1.weight.detach(), source["visual.conv1.weight"])


def test_same_seed_and_steps_give_a_byte_identical_checkpoint(tiny_set, tmp_path, monkeypatch):
    """The budget counts steps: a run on a 'slow machine' (every clock reading 30 s later than
    the last) gives the same bytes as a run on a fast one, and runs exactly `steps` steps."""
    import time as time_module

    fast = pretrain_tiny_clip(tiny_set, tmp_path / "fast.pt",
                              PretrainConfig(steps=3, batch_size=4, seed=3, num_threads=1), progress=False)
    clock = iter(range(0, 10**6, 30))
    monkeypatch.setattr(time_module, "perf_counter", lambda: float(next(clock)))
    slow = pretrain_tiny_clip(tiny_set, tmp_path / "slow.pt",
                              PretrainConfig(steps=3, batch_size=4, seed=3, num_threads=1), progress=False)
    assert fast["steps"] == slow["steps"] == 3
    assert (tmp_path / "fast.pt").read_bytes() == (tmp_path / "slow.pt").read_bytes()
    other = pretrain_tiny_clip(tiny_set, tmp_path / "other.pt",
                               PretrainConfig(steps=3, batch_size=4, seed=4, num_threads=1), progress=False)
    assert other["steps"] == 3
    assert (tmp_path / "other.pt").read_bytes() != (tmp_path / "fast.pt").read_bytes()


def test_time_ceiling_is_an_error_never_an_early_stop(tiny_set, tmp_path, monkeypatch):
    import time as time_module

    from xtfclip_lib.pretrain import PretrainTimeout

    clock = iter(range(0, 10**6, 30))
    monkeypatch.setattr(time_module, "perf_counter", lambda: float(next(clock)))
    with pytest.raises(PretrainTimeout, match="max_seconds=100.*nothing was written"):
        pretrain_tiny_clip(tiny_set, tmp_path / "x.pt", PretrainConfig(steps=50, batch_size=4, num_threads=1),
                           max_seconds=100, progress=False)
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.json").exists()


def test_pretraining_restores_the_thread_count(tiny_set, tmp_path):
    threads = torch.get_num_threads()
    metrics = pretrain_tiny_clip(tiny_set, tmp_path / "x.pt",
                                 PretrainConfig(steps=1, batch_size=4, num_threads=1), progress=False)
    assert torch.get_num_threads() == threads and metrics["steps"] == 1
    sidecar = json.loads((tmp_path / "x.json").read_text())
    assert sidecar["settings"]["torch_threads"] == 1 and sidecar["settings"]["steps"] == 1


def test_refuses_to_overwrite(pretrained, tiny_set):
    out, _ = pretrained
    before = out.read_bytes()
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        pretrain_tiny_clip(tiny_set, out, PretrainConfig(steps=1), progress=False)
    assert out.read_bytes() == before


def test_argument_errors(tiny_set, tmp_path):
    with pytest.raises(ValueError, match="steps=0"):
        pretrain_tiny_clip(tiny_set, tmp_path / "x.pt", PretrainConfig(steps=0))
    with pytest.raises(ValueError, match="steps=2.5"):
        pretrain_tiny_clip(tiny_set, tmp_path / "x.pt", PretrainConfig(steps=2.5))
    with pytest.raises(ValueError, match="max_seconds=-1"):
        pretrain_tiny_clip(tiny_set, tmp_path / "x.pt", PretrainConfig(steps=1), max_seconds=-1)
    with pytest.raises(FileNotFoundError, match="not found"):
        pretrain_tiny_clip(tmp_path / "missing", tmp_path / "x.pt", PretrainConfig(steps=1))


def test_cli_refuses_to_overwrite_and_has_help(pretrained, tiny_set, capsys):
    out, _ = pretrained
    assert main(["pretrain-clip", "--data", str(tiny_set), "--out", str(out), "--steps", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["pretrain-clip", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--steps" in text and "--max-seconds" in text


def test_feature_spread_on_hand_cases():
    same = feature_spread(np.tile([[1.0, 2.0, 3.0]], (4, 1)))
    assert same["mean_cosine"] == pytest.approx(1.0) and same["varying_energy"] == pytest.approx(0.0)
    basis = feature_spread(np.eye(3))            # orthogonal: cosine 0; mean (1/3, 1/3, 1/3)
    assert basis["mean_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert basis["varying_energy"] == pytest.approx(2 / 3)
    opposite = feature_spread(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    assert opposite["mean_cosine"] == pytest.approx(-1.0) and opposite["varying_energy"] == pytest.approx(1.0)
    # the mean over pairs equals a plain loop
    x = np.random.default_rng(0).normal(size=(7, 5)) + 2.0
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    loop = np.mean([n[i] @ n[j] for i in range(7) for j in range(7) if i != j])
    assert feature_spread(x)["mean_cosine"] == pytest.approx(loop)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_spread(np.ones((1, 3)))


def test_caption_colours_named_coarse_or_none():
    from xtfclip_lib.pretrain.colours import COARSE_COLOURS, COLOUR_NAMES, caption_colours

    colours = {1: ("red", "navy"), 2: (None, "white")}
    assert caption_colours(colours, "named") == colours
    assert caption_colours(colours, "coarse") == {1: ("bright", "dark"), 2: (None, "pale")}
    assert caption_colours(colours, "none") == {1: (None, None), 2: (None, None)}
    assert set(COARSE_COLOURS) == {name for name, _ in COLOUR_NAMES}
    with pytest.raises(ValueError, match="colour_words='pastel'"):
        caption_colours(colours, "pastel")


def test_pretraining_reports_its_steps_to_the_counter(tiny_set, tmp_path, monkeypatch):
    from xtfclip_lib.pretrain import loop as pretrain
    from xtfclip_lib.utils import progress

    seen = []
    real = progress.StepCounter.update
    monkeypatch.setattr(progress.StepCounter, "update",
                        lambda self, done: (real(self, done), seen.append(progress.read_counter(self.path))))
    out = tmp_path / "clip.pt"
    pretrain.pretrain_tiny_clip(tiny_set, out, PretrainConfig(steps=3, batch_size=4, num_threads=1),
                                progress=False)
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    assert not progress.counter_path(out).exists() and out.is_file()


@pytest.mark.parametrize("option, named", [("colour_word=named", "'colour_word'"),    # unknown key
                                           ("steps=many", "'steps' expects int"),      # wrong type
                                           ("lr=fast", "'lr' expects float"),
                                           ("steps=0", "steps=0"),                     # out of range
                                           ("steps", "not of the form key=value")])
def test_cli_set_errors_name_the_key_before_any_work(option, named, tmp_path, capsys):
    out = tmp_path / "clip.pt"
    argv = ["pretrain-clip", "--data", str(tmp_path / "missing"), "--out", str(out), "--set", option]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and "missing" not in err
    assert not out.exists()


def test_cli_set_and_shortcuts_reach_the_loop(tiny_set, tmp_path):
    out = tmp_path / "clip.pt"
    assert main(["pretrain-clip", "--data", str(tiny_set), "--out", str(out), "--no-progress",
                 "--set", "steps=2", "--set", "colour_words=named", "--set", "caption_dropout=0.0",
                 "--set", "seed=5", "--seed", "7", "--batch-size", "4", "--threads", "1"]) == 0
    settings = json.loads(out.with_suffix(".json").read_text())["settings"]
    assert settings["steps"] == 2 and settings["colour_words"] == "named"
    assert settings["caption_dropout"] == 0.0
    assert settings["seed"] == 7 and settings["batch_size"] == 4 and settings["torch_threads"] == 1
    assert list(settings) == ["arch", "image_size", "steps", "max_seconds", "batch_size",
                              "frames_per_tracklet", "lr", "weight_decay", "caption_dropout", "seed",
                              "num_eval_ids", "crops_per_tracklet", "colour_words", "torch_threads"]


def test_cli_help_shows_the_real_defaults(capsys):
    import re

    with pytest.raises(SystemExit):
        main(["pretrain-clip", "--help"])
    text = capsys.readouterr().out
    defaults = PretrainConfig()
    assert "the library's" not in text and "--set KEY=VALUE" in text
    for flag, value in (("--steps", defaults.steps), ("--threads", defaults.num_threads),
                        ("--seed", defaults.seed), ("--arch", defaults.arch),
                        ("--image-size", defaults.image_size), ("--batch-size", defaults.batch_size),
                        ("--lr", defaults.lr)):
        entry = re.search(rf"\n  {flag} [A-Z_]+.*?\(default: ([^,)]*)", text, re.S)
        expected = value if isinstance(value, str) else f"{value:g}"
        assert entry and entry.group(1) == expected, flag
