"""Config: presets, variants, dotted overrides and their errors, round trips."""
from __future__ import annotations

import pytest

from xtfclip_lib.config import (EXTENSIONS, SWITCHES, VARIANTS, Config, FeatureConfig, available_presets,
                                config_digest, from_dict, load_config, load_config_file, save_config,
                                to_dict, with_override)


def test_switch_names_are_the_methods():
    assert EXTENSIONS == ("bicubic_pos_embed", "attention_pooling", "online_label_smoothing",
                          "frame_pos_embed", "learnable_memory_weight", "instance_norm_neck",
                          "soft_biometric_mask")
    assert SWITCHES == EXTENSIONS + ("grad_centralization", "flip_tta")


@pytest.mark.parametrize("preset", ["paper", "tiny", "quick"])
def test_presets_load(preset):
    assert preset in available_presets()
    cfg = load_config(preset, "x_tfclip")
    assert all(getattr(cfg.features, s) for s in SWITCHES)
    cfg = load_config(preset, "tf_clip")
    assert not any(getattr(cfg.features, s) for s in SWITCHES)


def test_paper_preset_is_the_method():
    cfg = load_config("paper")
    assert cfg.data.image_size_hw == (288, 144)
    assert (cfg.data.num_frames, cfg.data.num_ids_per_batch, cfg.data.num_tracklets_per_id) == (8, 3, 6)
    assert cfg.model.arch == "ViT-B-16-quickgelu" and cfg.model.pretrained == "openai"
    assert cfg.train.base_lr == 5e-6 and cfg.train.epochs == 80 and cfg.train.lr_steps == (30, 50, 70)
    assert cfg.loss.triplet_margin == 0.3 and cfg.loss.id_weight == 0.25


def test_tiny_preset_types_are_coerced():
    cfg = load_config("tiny")
    assert cfg.data.image_size_hw == (64, 32) and isinstance(cfg.data.image_size_hw, tuple)
    assert isinstance(cfg.train.lr_steps, tuple) and all(type(s) is int for s in cfg.train.lr_steps)
    assert cfg.train.lr_steps[-1] < cfg.train.epochs
    assert type(cfg.train.backbone_lr_factor) is float and cfg.train.num_threads == 1


def test_backbone_lr_factor_is_the_method_rule_by_default():
    """1.0 in the defaults and the paper preset: the method's parameter groups are unchanged."""
    assert load_config("paper").train.backbone_lr_factor == 1.0
    assert load_config("quick").train.backbone_lr_factor == 1.0


def test_override_flips_one_switch_only():
    base = load_config("quick", "x_tfclip")
    cfg = load_config("quick", "x_tfclip", ["features.attention_pooling=false"])
    assert cfg.features.attention_pooling is False
    changed = {k for k, v in to_dict(cfg.features).items() if v != to_dict(base.features)[k]}
    assert changed == {"attention_pooling"}
    assert cfg.data == base.data and cfg.model == base.model


def test_override_values_are_typed():
    cfg = load_config("quick", None, ["train.base_lr=3.0e-4", "train.epochs=3",
                                      "data.image_size_hw=[32, 16]", ("train.seed", 7)])
    assert cfg.train.base_lr == 3e-4 and cfg.train.epochs == 3
    assert cfg.data.image_size_hw == (32, 16) and cfg.train.seed == 7


def test_int_is_accepted_for_float():
    assert with_override(Config(), "train.base_lr", 1).train.base_lr == 1.0


@pytest.mark.parametrize("override, error, fragment", [
    ("features.attention_pool=false", KeyError, "attention_pool"),
    ("nonsense.key=1", KeyError, "nonsense"),
    ("train.epochs=many", TypeError, "train.epochs"),
    ("features.attention_pooling=3", TypeError, "features.attention_pooling"),
    ("train.base_lr=3e-4", TypeError, "with a dot"),
    ("train.epochs.x=1", KeyError, "not a section"),
    ("train", ValueError, "key=value"),
])
def test_bad_overrides_name_the_key(override, error, fragment):
    with pytest.raises(error, match=fragment):
        load_config("quick", "x_tfclip", [override])


def test_unknown_preset_and_variant():
    with pytest.raises(KeyError, match="shipped presets"):
        load_config("huge")
    with pytest.raises(KeyError, match="x_tfclip"):
        load_config("quick", "xtfclip")


def test_malformed_preset_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(str(bad))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("data:\n  num_frame: 4\n")
    with pytest.raises(KeyError, match="num_frame"):
        load_config(str(wrong))


def test_round_trip_and_digest(tmp_path):
    cfg = load_config("tiny", "tf_clip", ["train.seed=3"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config_file(path)
    assert again == cfg and config_digest(again) == config_digest(cfg)
    assert from_dict(to_dict(cfg)) == cfg
    assert config_digest(with_override(cfg, "train.seed", 4)) != config_digest(cfg)


def test_variants_cover_every_switch():
    for values in VARIANTS.values():
        assert set(values) == set(SWITCHES)
    assert FeatureConfig() == load_config("paper", "x_tfclip").features
