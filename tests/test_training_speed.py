"""Lean, fast training (issue 15): each speed switch leaves a seeded step as it was.

Exact switches (activation checkpointing, foreach Adam, the camera-id check moved out of the
step) must give bitwise the same losses, gradients and weights; switches that change rounding
(bf16 autocast, fused Adam, torch.compile) stay within the tolerance stated next to them. All on
the `tiny` network with random weights, one thread.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from xtfclip_lib.engine import checkpoint as ckpt
from xtfclip_lib.engine import loop as engine
from xtfclip_lib.config import LATER_KEYS, config_digest, load_config, to_dict
from xtfclip_lib.engine.distributed import DistEnv
from xtfclip_lib.engine.amp import autocast, autocast_dtype, cpu_has_native_bf16
from xtfclip_lib.losses import Criterion
from xtfclip_lib.model import build_model
from xtfclip_lib.engine.optim import build_optimizer, centralize_gradients

NUM_CLASSES = 6
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(*overrides: str):
    return load_config("tiny", "x_tfclip", ["model.pretrained=", *overrides])


def batch(cfg, seed: int = 1) -> dict:
    """P=2 identities x K=2 tracklets of the tiny preset's T frames and input size."""
    gen = torch.Generator().manual_seed(seed)
    T, (H, W) = cfg.data.num_frames, cfg.data.image_size_hw
    return {"clips": torch.randn(4, T, 3, H, W, generator=gen), "camids": torch.tensor([0, 2, 4, 5]),
            "pids": torch.tensor([0, 0, 3, 3])}


def seeded_steps(cfg, num_steps: int = 2, device: torch.device = CPU) -> dict:
    """`num_steps` training steps as `engine.train_one_epoch` takes them, from seed 0, on `device`.

    Returns each step's loss and gradients and the final weights.
    """
    engine.seed_everything(0)
    model = build_model(cfg, NUM_CLASSES)
    model.set_memory(torch.randn(NUM_CLASSES, model.backbone.embed_dim, generator=torch.Generator().manual_seed(2)))
    model.to(device).train()
    criterion = Criterion(cfg.loss, cfg.features, NUM_CLASSES, cfg.data.num_frames)
    optimizer = build_optimizer(model, cfg.train)
    train_model = engine.compile_model(model) if cfg.train.compile else model
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    losses, grads = [], []
    for step in range(num_steps):
        data = {k: v.to(device) for k, v in batch(cfg, seed=step + 1).items()}
        with autocast(device, amp_dtype):
            out = train_model(data["clips"], data["camids"])
        loss, _ = criterion({k: v.float() for k, v in out.items()}, data["pids"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        centralize_gradients(model.parameters())
        optimizer.step()
        losses.append(loss.detach())
    return {"losses": losses, "grads": grads, "model": model,
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


@pytest.fixture(scope="module")
def reference():
    """The default path of the tiny preset: fp32, no checkpointing, torch's Adam, eager (on one
    thread, like every run it is compared with: a module fixture is set up before `one_thread`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return seeded_steps(tiny())
    finally:
        torch.set_num_threads(threads)


def assert_bitwise(run: dict, reference: dict) -> None:
    assert all(torch.equal(a, b) for a, b in zip(run["losses"], reference["losses"]))
    for got, want in zip(run["grads"], reference["grads"]):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[n], want[n]) for n in want), [n for n in want if not torch.equal(got[n], want[n])]
    assert all(torch.equal(run["weights"][n], w) for n, w in reference["weights"].items())


def relative_difference(run: dict, reference: dict, what: str) -> float:
    """|a - b| / |b| over all weights, or the largest over the steps of all gradients."""
    def flat(tensors) -> torch.Tensor:
        return torch.cat([t.flatten() for t in tensors])
    if what == "weights":
        pairs = [(flat(run["weights"].values()), flat(reference["weights"].values()))]
    else:
        pairs = [(flat(g.values()), flat(h.values())) for g, h in zip(run["grads"], reference["grads"])]
    return max(float((a - b).norm() / b.norm()) for a, b in pairs)


# --------------------------------------------------------------------------------------------
# The default path

def test_tiny_preset_keeps_every_speed_switch_off():
    train = tiny().train
    assert (train.amp, train.grad_checkpointing, train.optimizer_impl, train.compile) == \
        ("auto", False, "auto", False)
    assert autocast_dtype(CPU, train.amp) is None                       # fp32 on CPU
    assert all("foreach" not in g or g["foreach"] is None for g in build_optimizer(
        build_model(tiny(), NUM_CLASSES), train).param_groups)          # torch's own choice


def test_new_keys_at_their_defaults_leave_the_config_digest_as_before():
    """At their defaults the new keys hash as the rule from before they existed did (sha256 of
    the sorted JSON of the resolved config, without them), so feature caches and finished
    studies keyed before them stay valid; a non-default value of a new key changes the digest."""
    def digest_before_the_new_keys(cfg) -> str:
        mapping = to_dict(cfg)
        for section, key in LATER_KEYS:
            del mapping[section][key]
        return hashlib.sha256(json.dumps(mapping, sort_keys=True).encode()).hexdigest()[:16]

    for preset, variant in (("tiny", "x_tfclip"), ("tiny", "tf_clip"), ("quick", "x_tfclip"), ("paper", "x_tfclip")):
        cfg = load_config(preset, variant)
        assert config_digest(cfg) == digest_before_the_new_keys(cfg), (preset, variant)
    base = config_digest(tiny())
    for (section, key), _ in LATER_KEYS.items():
        value = {"grad_checkpointing": "true", "optimizer_impl": "fused", "compile": "true"}[key]
        assert config_digest(tiny(f"{section}.{key}={value}")) != base
    assert set(LATER_KEYS) <= {(s, k) for s, keys in to_dict(tiny()).items() if isinstance(keys, dict)
                               for k in keys}


def test_a_run_saved_before_the_new_keys_resumes_and_checkpointing_may_change():
    cfg = tiny()
    saved = to_dict(cfg)
    for _, key in LATER_KEYS:
        del saved["train"][key]                      # a last.pt written before issue 15
    state = {"meta": ckpt.checkpoint_meta(cfg, NUM_CLASSES), "config": saved}
    engine._check_resumable(state, cfg, Path("last.pt"), NUM_CLASSES)
    engine._check_resumable(state, tiny("train.grad_checkpointing=true"), Path("last.pt"), NUM_CLASSES)
    with pytest.raises(ValueError, match="train.optimizer_impl: 'auto' -> 'fused'"):
        engine._check_resumable(state, tiny("train.optimizer_impl=fused"), Path("last.pt"), NUM_CLASSES)


# --------------------------------------------------------------------------------------------
# Exact switches: bitwise the same step

def test_grad_checkpointing_gives_the_same_losses_and_gradients(reference):
    run = seeded_steps(tiny("train.grad_checkpointing=true"))
    assert run["model"].backbone.visual.transformer.grad_checkpointing
    assert not reference["model"].backbone.visual.transformer.grad_checkpointing
    assert_bitwise(run, reference)


def test_grad_checkpointing_keeps_less_for_backward():
    """What autograd saves for backward in one training forward: the blocks' inner activations
    are recomputed, so much less is kept (the reason for the switch)."""
    def saved_bytes(cfg) -> int:
        torch.manual_seed(0)
        model = build_model(cfg, NUM_CLASSES)
        model.set_memory(torch.randn(NUM_CLASSES, model.backbone.embed_dim))
        model.train()
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor
        data = batch(cfg)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.backbone(data["clips"].flatten(0, 1))
        return total
    assert saved_bytes(tiny("train.grad_checkpointing=true")) < 0.4 * saved_bytes(tiny())


def test_foreach_adam_is_the_loop_bitwise(reference):
    assert_bitwise(seeded_steps(tiny("train.optimizer_impl=foreach")), reference)


def test_camera_ids_are_checked_on_the_cpu_batch_before_the_step():
    cfg = tiny()
    model = build_model(cfg, NUM_CLASSES)
    model.set_memory(torch.randn(NUM_CLASSES, model.backbone.embed_dim))
    criterion = Criterion(cfg.loss, cfg.features, NUM_CLASSES, cfg.data.num_frames)
    bad = {**batch(cfg), "camids": torch.tensor([0, 1, 2, 6])}
    with pytest.raises(ValueError, match=r"camera ids must lie in \[0, 6\)"):
        engine.train_one_epoch(model, criterion, [bad], build_optimizer(model, cfg.train),
                               torch.amp.GradScaler("cpu", enabled=False), cfg, DistEnv(device=CPU), None, 0)


# --------------------------------------------------------------------------------------------
# Switches that round differently: within a stated tolerance

# Measured on the tiny network (2 steps at the tiny preset's LR, 5e-3): bf16 autocast moves the
# losses by 0.2 %, all gradients together by 7 %, the weights after the steps by 1.2 %; fused Adam
# moves the second loss by 2e-7 and the weights by 4e-5 (~1e-9 after one step, amplified by Adam's
# normalisation of the smallest gradients). The bounds leave room of about 10x and 3x.
BF16_LOSS_RTOL, BF16_GRAD_RTOL, BF16_WEIGHT_RTOL = 2e-2, 0.2, 0.05
FUSED_LOSS_RTOL, FUSED_WEIGHT_RTOL = 1e-5, 2e-4


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_on_cpu_stays_within_tolerance(reference):
    run = seeded_steps(tiny("train.amp=bf16"))
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    for got, want in zip(run["losses"], reference["losses"]):
        assert got.dtype == torch.float32                              # the criterion stays fp32
        assert abs(float(got) - float(want)) <= BF16_LOSS_RTOL * abs(float(want))
    assert relative_difference(run, reference, "grads") < BF16_GRAD_RTOL
    assert relative_difference(run, reference, "weights") < BF16_WEIGHT_RTOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_checkpointing_and_bf16_keep_the_step():
    """The GPU path of the same switches (run where a device is lent: ``pytest -m gpu``):
    checkpointing recomputes the same step (CUDA kernels need not be bitwise reproducible, so
    within a float tolerance), bf16 autocast stays within the CPU test's tolerances."""
    cuda = torch.device("cuda")
    plain = seeded_steps(tiny(), device=cuda)
    checkpointed = seeded_steps(tiny("train.grad_checkpointing=true"), device=cuda)
    assert relative_difference(checkpointed, plain, "grads") < 1e-5
    bf16 = seeded_steps(tiny("train.amp=bf16"), device=cuda)
    for got, want in zip(bf16["losses"], plain["losses"]):
        assert abs(float(got) - float(want)) <= BF16_LOSS_RTOL * abs(float(want))
    assert relative_difference(bf16, plain, "grads") < BF16_GRAD_RTOL


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not cpu_has_native_bf16()
    with pytest.raises(ValueError, match="no native bf16.*train.amp=off"):
        autocast_dtype(CPU, "bf16")


@pytest.mark.parametrize("key, value, fragment", [
    ("train.amp", "fp8", r"train.amp='fp8'; expected one of \['auto', 'bf16', 'off'\]"),
    ("train.optimizer_impl", "apex", r"train.optimizer_impl='apex'; expected one of \['auto', 'foreach', 'fused'\]"),
])
def test_bad_values_name_the_key(key, value, fragment):
    cfg = tiny(f"{key}={value}")
    with pytest.raises(ValueError, match=fragment):
        autocast_dtype(CPU, cfg.train.amp)
        build_optimizer(build_model(cfg, NUM_CLASSES), cfg.train)


def test_fused_adam_stays_within_tolerance(reference):
    run = seeded_steps(tiny("train.optimizer_impl=fused"))
    assert torch.allclose(torch.stack(run["losses"]), torch.stack(reference["losses"]), rtol=FUSED_LOSS_RTOL)
    assert relative_difference(run, reference, "weights") < FUSED_WEIGHT_RTOL


@pytest.mark.slow
def test_compiled_forward_stays_within_tolerance(reference):
    """torch.compile (about a minute of compiling on one core) with eager's dropout masks: the
    losses agree to 1e-4, the weights after two steps to 1.1e-3 (measured; Adam amplifies the
    rounding of the smallest gradients, as with fused Adam)."""
    run = seeded_steps(tiny("train.compile=true"))
    assert torch.allclose(torch.stack(run["losses"]), torch.stack(reference["losses"]), rtol=1e-4)
    assert relative_difference(run, reference, "weights") < 5e-3
