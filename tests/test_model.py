"""The X-TFCLIP network: shapes per switch, what each switch changes, weight loading (METHOD §2, §4, §6)."""
from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xtfclip_lib.config import SWITCHES, load_config
from xtfclip_lib.losses import Criterion
from xtfclip_lib.model import (FRAME_CLASSIFIER, XTFCLIP, CLIPBackbone, build_model, check_input_size,
                               resize_position_embedding)
from xtfclip_lib.model.neck import BatchNormNeck, InstanceNormNeck
from xtfclip_lib.model.pooling import AttentionPool, MeanPool
from xtfclip_lib.model.ssp import AddMemoryUpdate, LearnableMemoryWeight

NUM_CLASSES = 5
WIDTH = EMBED = 64            # micro-clip (model/configs/micro-clip.json)
T = 2                         # quick preset's num_frames
# parameter/buffer name prefixes each switch may add or remove, and nothing else
SWITCH_KEYS = {
    "bicubic_pos_embed": (),
    "attention_pooling": ("pool_img.", "pool_proj.", "pool_video.", "tmd.pool_tokens.", "tmd.pool_frames."),
    "online_label_smoothing": (),
    "frame_pos_embed": ("frame_embed.",),
    "learnable_memory_weight": ("memory_update.",),
    "instance_norm_neck": ("neck_img.", "neck_proj.", "neck_frame.", "neck_tmd."),
    "soft_biometric_mask": (),
    "grad_centralization": (),
    "flip_tta": (),
}


def quick(variant: str = "x_tfclip", *overrides: str):
    return load_config("quick", variant, list(overrides))


def make_model(cfg, seed: int = 0) -> XTFCLIP:
    torch.manual_seed(seed)
    model = build_model(cfg, NUM_CLASSES)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    model.set_memory(torch.randn(NUM_CLASSES, EMBED, generator=gen))
    return model


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return {"clips": torch.randn(4, T, 3, 64, 32, generator=gen),
            "camids": torch.tensor([0, 1, 4, 5]), "labels": torch.tensor([0, 0, 3, 3])}


def _cases():
    yield "x_tfclip", None
    yield "tf_clip", None
    for variant in ("x_tfclip", "tf_clip"):
        for switch in SWITCHES:
            yield variant, switch


@pytest.mark.parametrize("variant, flipped", list(_cases()))
def test_shapes_with_each_switch_flipped(variant, flipped, batch):
    overrides = [] if flipped is None else [f"features.{flipped}={variant == 'tf_clip'}"]
    cfg = quick(variant, *overrides)
    model = make_model(cfg)
    feats = model(batch["clips"], batch["camids"])
    assert feats.shape == (4, 2 * WIDTH + EMBED)

    model.train()
    out = model(batch["clips"], batch["camids"])
    expected = {"f_img": (4, WIDTH), "f_proj": (4, EMBED), "f_tmd": (4, WIDTH),
                "logits_img": (4, NUM_CLASSES), "logits_proj": (4, NUM_CLASSES),
                "logits_tmd": (4, NUM_CLASSES), "frame_logits": (4, T, NUM_CLASSES),
                "i2t_logits": (4, NUM_CLASSES)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    # the test feature is [f_img, f_proj, f_tmd] before the necks
    torch.testing.assert_close(feats, torch.cat([out["f_img"], out["f_proj"], out["f_tmd"]], 1))
    total, terms = Criterion(cfg.loss, cfg.features, NUM_CLASSES, T)(out, batch["labels"])
    total.backward()
    assert torch.isfinite(total) and terms["loss"] == pytest.approx(total.item())


@pytest.mark.parametrize("variant", ["x_tfclip", "tf_clip"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_changes_only_its_own_parts(variant, switch):
    base = build_model(quick(variant), NUM_CLASSES)
    flipped = build_model(quick(variant, f"features.{switch}={variant == 'tf_clip'}"), NUM_CLASSES)
    differing = set(base.state_dict()) ^ set(flipped.state_dict())
    prefixes = SWITCH_KEYS[switch]
    assert all(key.startswith(prefixes) for key in differing)
    assert bool(differing) == bool(prefixes)
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in differing), prefix


@pytest.mark.parametrize("variant", ["x_tfclip", "tf_clip"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_leaves_the_initial_weights_of_every_other_module(variant, switch):
    """Same seed, one switch flipped: every weight both models have starts equal (a paired
    ablation), and the global generator ends in the same state."""
    def build(cfg):
        torch.manual_seed(123)
        model = build_model(cfg, NUM_CLASSES)
        return model.state_dict(), torch.random.get_rng_state()

    base, base_rng = build(quick(variant))
    flipped, flipped_rng = build(quick(variant, f"features.{switch}={variant == 'tf_clip'}"))
    shared = sorted(set(base) & set(flipped))
    assert len(shared) > 50
    different = [key for key in shared if not torch.equal(base[key], flipped[key])]
    assert different == []
    assert torch.equal(base_rng, flipped_rng)


def test_initial_weights_follow_the_seed():
    """The streams come from the global seed: another seed gives other head weights."""
    torch.manual_seed(1)
    first = build_model(quick(), NUM_CLASSES).state_dict()
    torch.manual_seed(2)
    second = build_model(quick(), NUM_CLASSES).state_dict()
    assert not torch.equal(first["ssp.memory_in.1.weight"], second["ssp.memory_in.1.weight"])
    assert not torch.equal(first["classifier_img.weight"], second["classifier_img.weight"])


def test_frame_embedding_exists_only_when_on():
    on = build_model(quick("x_tfclip"), NUM_CLASSES)
    off = build_model(quick("x_tfclip", "features.frame_pos_embed=false"), NUM_CLASSES)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(on) - count(off) == T * WIDTH
    assert isinstance(off.frame_embed, nn.Identity)
    assert torch.equal(on.frame_embed.weight, torch.zeros(T, WIDTH))   # starts at zero


def test_frame_embedding_changes_class_token_per_frame(batch):
    model = make_model(quick("x_tfclip"))
    same_frames = batch["clips"][:, :1].expand(-1, T, -1, -1, -1)
    tokens, _ = model._encode(same_frames, batch["camids"])
    torch.testing.assert_close(tokens[:, 0], tokens[:, 1])          # zero init: frames alike
    with torch.no_grad():
        model.frame_embed.weight[1] += 1.0
    tokens, _ = model._encode(same_frames, batch["camids"])
    assert not torch.allclose(tokens[:, 0, 0], tokens[:, 1, 0])


def test_instance_norm_neck_rows_have_zero_mean_unit_variance():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 32, generator=gen) * 5 + 3
    y = InstanceNormNeck(32)(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    assert not list(InstanceNormNeck(32).parameters())                  # no affine
    on, off = build_model(quick("x_tfclip"), 3), build_model(quick("tf_clip"), 3)
    assert all(isinstance(getattr(on, n), InstanceNormNeck) for n in ("neck_img", "neck_proj", "neck_frame", "neck_tmd"))
    assert isinstance(off.neck_tmd, BatchNormNeck) and not off.neck_tmd.bn.bias.requires_grad


def test_memory_weight_starts_at_half_and_gets_a_gradient(batch):
    model = make_model(quick("x_tfclip"))
    assert isinstance(model.memory_update, LearnableMemoryWeight)
    assert model.memory_update.weight.item() == 0.5
    model.train()
    out = model(batch["clips"], batch["camids"])
    F.cross_entropy(out["i2t_logits"], batch["labels"]).backward()
    assert model.memory_update.weight.grad is not None and model.memory_update.weight.grad.abs() > 0
    plain = build_model(quick("tf_clip"), NUM_CLASSES)
    assert isinstance(plain.memory_update, AddMemoryUpdate) and not list(plain.memory_update.parameters())


def test_attention_pooling_weights_sum_to_one_over_the_pooled_axis():
    torch.manual_seed(0)
    pool = AttentionPool(8)
    x = torch.randn(3, 5, 7, 8)
    for dim in (1, 2):
        w = pool.weights(x, dim)
        torch.testing.assert_close(w.sum(dim), torch.ones_like(w.sum(dim)))
        torch.testing.assert_close(pool(x, dim), (x * w).sum(dim))
        torch.testing.assert_close(MeanPool()(x, dim), x.mean(dim))
    with pytest.raises(ValueError, match="feature axis"):
        pool.weights(x, -1)
    model = build_model(quick("x_tfclip"), 3)
    sites = [model.pool_img, model.pool_proj, model.pool_video, model.tmd.pool_tokens, model.tmd.pool_frames]
    assert all(isinstance(s, AttentionPool) for s in sites)
    assert len({id(s) for s in sites}) == 5                          # each site its own module
    assert all(isinstance(s, MeanPool) for s in [build_model(quick("tf_clip"), 3).pool_img])


def test_tmd_sees_detached_tokens_and_ssp_does_not(batch):
    model = make_model(quick("x_tfclip"))
    model.train()
    seen = {}
    model.tmd.register_forward_hook(lambda m, args, out: seen.__setitem__("tmd", args[0].requires_grad))
    model.ssp.register_forward_hook(lambda m, args, out: seen.__setitem__("ssp", args[1].requires_grad))
    out = model(batch["clips"], batch["camids"])
    assert seen == {"tmd": False, "ssp": True}
    (out["logits_tmd"].sum() + out["frame_logits"].sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())    # TMD losses never reach it
    assert model.tmd.message_fc.weight.grad is not None


def test_shared_tmd_classifier_and_frozen_bn_bias():
    model = build_model(quick("tf_clip"), NUM_CLASSES)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n in trainable if n.startswith(FRAME_CLASSIFIER + ".")] == ["classifier_tmd.weight"]
    assert getattr(model, FRAME_CLASSIFIER).bias is None              # one bias-free classifier
    assert "neck_tmd.bn.bias" not in trainable                         # frozen BN bias
    assert "neck_tmd.bn.bias" in dict(model.named_parameters())


def test_memory_features_ignore_camera_and_frame_embeddings(batch):
    model = make_model(quick("x_tfclip"))
    before = model.memory_features(batch["clips"], batch["camids"])
    feats = model(batch["clips"], batch["camids"])
    with torch.no_grad():
        model.camera_embed.add_(1.0)
        model.frame_embed.weight.add_(1.0)
    torch.testing.assert_close(model.memory_features(batch["clips"]), before)
    assert not torch.allclose(model(batch["clips"], batch["camids"]), feats)
    B, T_, C, H, W = batch["clips"].shape
    _, proj = model.backbone(batch["clips"].reshape(B * T_, C, H, W))
    torch.testing.assert_close(before, proj[:, 0].reshape(B, T_, -1).mean(1))


def test_memory_is_a_saved_buffer_and_required(batch):
    cfg = quick("x_tfclip")
    model = make_model(cfg)
    assert "memory" in model.state_dict()
    fresh = build_model(cfg, NUM_CLASSES)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.memory, model.memory)
    with pytest.raises(ValueError, match=r"\(5, 64\)"):
        fresh.set_memory(torch.zeros(4, 64))
    unset = build_model(cfg, NUM_CLASSES).train()
    with pytest.raises(RuntimeError, match="set_memory"):
        unset(batch["clips"], batch["camids"])


def test_bad_inputs_name_the_culprit(batch):
    model = make_model(quick("x_tfclip"))
    with pytest.raises(ValueError, match="camera ids"):
        model(batch["clips"], torch.tensor([0, 1, 2, 6]))
    with pytest.raises(ValueError, match="64x32"):
        model(torch.zeros(1, T, 3, 96, 48), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_frames=2"):
        model(torch.zeros(1, 3, 3, 64, 32), torch.tensor([0]))
    with pytest.raises(KeyError, match="model.arch"):
        build_model(quick("x_tfclip", "model.arch=ViT-Nope"), 3)
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        build_model(quick("x_tfclip", "model.pretrained=missing/clip.pt"), 3)


# ------------------------------------------------------------------------------------------
# Pretrained weights

def _reference_table(pos: torch.Tensor, grid_hw, mode: str) -> torch.Tensor:
    """METHOD §6 written out independently: (1, D, g, g) -> interpolate -> row-major rows."""
    g = int((pos.shape[0] - 1) ** 0.5)
    grid = pos[1:].reshape(g, g, -1).permute(2, 0, 1).unsqueeze(0)
    grid = F.interpolate(grid, size=grid_hw, mode=mode, align_corners=False, antialias=False)
    return torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(grid_hw[0] * grid_hw[1], -1)])


@pytest.fixture(scope="module")
def micro_clip_file(tmp_path_factory):
    """A random micro CLIP at its square 32x32 (4x4 grid), saved as an open_clip checkpoint."""
    torch.manual_seed(3)
    clip = open_clip.create_model("micro-clip", pretrained=None)
    path = tmp_path_factory.mktemp("micro") / "micro_clip.pt"
    torch.save({"state_dict": clip.state_dict(), "epoch": 1}, path)
    return clip, path


def test_bicubic_and_bilinear_give_different_grids(micro_clip_file):
    clip, path = micro_clip_file
    source = clip.visual.positional_embedding.detach()
    tables = {}
    for switch, mode in ((True, "bicubic"), (False, "bilinear")):
        model = build_model(quick("x_tfclip", f"features.bicubic_pos_embed={switch}",
                                  f"model.pretrained={path}"), 3)
        tables[mode] = model.backbone.visual.positional_embedding.detach()
        torch.testing.assert_close(tables[mode], _reference_table(source, (8, 4), mode))
        torch.testing.assert_close(model.backbone.visual.conv1.weight, clip.visual.conv1.weight)
    assert not torch.allclose(tables["bicubic"][1:], tables["bilinear"][1:])


def test_pretrained_grid_comes_from_the_checkpoint(micro_clip_file, caplog):
    _, path = micro_clip_file
    with caplog.at_level("WARNING", logger="xtfclip_lib.model.backbone"):
        model = build_model(quick("x_tfclip", f"model.pretrained={path}",
                                  "model.pretrained_image_size=64"), 3)
    assert "8x8 position grid" in caplog.text and "4x4" in caplog.text
    assert model.backbone.visual.positional_embedding.shape == (1 + 8 * 4, WIDTH)


@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated")
def test_torchscript_and_safetensors_files_load(micro_clip_file, tmp_path):
    from safetensors.torch import save_file
    clip, _ = micro_clip_file

    class Holder(nn.Module):          # an OpenAI-style archive: a scripted module with .visual
        def __init__(self, visual):
            super().__init__()
            self.visual = visual

        def forward(self, images):
            return self.visual(images)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Holder(clip.visual).eval(), torch.randn(1, 3, 32, 32), check_trace=False)
    torch.jit.save(traced, tmp_path / "jit.pt")
    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, tmp_path / "w.safetensors")
    for name in ("jit.pt", "w.safetensors"):
        model = build_model(quick("x_tfclip", f"model.pretrained={tmp_path / name}"), 3)
        torch.testing.assert_close(model.backbone.visual.proj, clip.visual.proj)


def test_wrong_architecture_names_the_keys(tmp_path):
    tiny = open_clip.create_model("tiny-clip", pretrained=None)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match=r"unexpected: .*transformer\.resblocks\.2\..*conv1\.weight \(128, 3, 8, 8\) vs \(64, 3, 8, 8\)"):
        build_model(quick("x_tfclip", f"model.pretrained={tmp_path / 'tiny.pt'}"), 3)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no image-tower weights"):
        build_model(quick("x_tfclip", f"model.pretrained={tmp_path / 'other.pt'}"), 3)


def test_checkpoint_of_another_input_size_names_both_sizes():
    small = build_model(quick("x_tfclip"), NUM_CLASSES).state_dict()
    larger = build_model(quick("x_tfclip", "data.image_size_hw=[96, 48]"), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"trained at 64x32 .* built for 96x48"):
        larger.load_state_dict(small)
    check_input_size(small, (64, 32))
    with pytest.raises(ValueError, match="96x48"):
        check_input_size(small, (96, 48))
    with pytest.raises(ValueError, match="identities"):
        build_model(quick("x_tfclip"), NUM_CLASSES + 1).load_state_dict(small)


@pytest.fixture(scope="module")
def vit_b16_files(tmp_path_factory):
    """Random ViT-B-16 (QuickGELU) saved as an open_clip checkpoint and as an OpenAI-style fp16 dict."""
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    state = clip.state_dict()
    folder = tmp_path_factory.mktemp("vitb16")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "open_clip.pt")
    torch.save({k: v.half() for k, v in state.items()}, folder / "openai_state_dict.pt")
    return {k: state[f"visual.{k}"].clone() for k in ("positional_embedding", "conv1.weight")}, folder


@pytest.mark.parametrize("file, mode", [("open_clip.pt", "bilinear"), ("openai_state_dict.pt", "bicubic")])
def test_vit_b16_file_loads_at_288x144(vit_b16_files, file, mode):
    source, folder = vit_b16_files
    if file == "openai_state_dict.pt":
        source = {k: v.half().float() for k, v in source.items()}
    backbone = CLIPBackbone("ViT-B-16-quickgelu", (288, 144), mode)
    backbone.load_pretrained(str(folder / file), 224)
    table = backbone.visual.positional_embedding.detach()
    assert table.shape == (1 + 18 * 9, 768)
    torch.testing.assert_close(table[0], source["positional_embedding"][0], rtol=0, atol=0)
    torch.testing.assert_close(table, _reference_table(source["positional_embedding"], (18, 9), mode))
    torch.testing.assert_close(table, resize_position_embedding(source["positional_embedding"], (18, 9), mode))
    torch.testing.assert_close(backbone.visual.conv1.weight, source["conv1.weight"])


def test_paper_model_loads_bicubic_and_gives_a_2048_test_feature(vit_b16_files):
    source, folder = vit_b16_files
    cfg = load_config("paper", "x_tfclip", [f"model.pretrained={folder / 'open_clip.pt'}", "data.num_frames=1"])
    model = build_model(cfg, 4).eval()
    torch.testing.assert_close(model.backbone.visual.positional_embedding.detach(),
                               _reference_table(source["positional_embedding"], (18, 9), "bicubic"))
    with torch.no_grad():
        feats = model(torch.zeros(1, 1, 3, 288, 144), torch.tensor([5]))
    assert feats.shape == (1, 2048)
