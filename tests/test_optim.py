"""Schedule, parameter groups and gradient centralisation (METHOD §3, §6)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xtfclip_lib.config import TrainConfig, load_config
from xtfclip_lib.engine.optim import (EpochSchedule, build_optimizer, centralize_gradients, lr_at_epoch,
                               param_groups)


@pytest.mark.parametrize("epoch, expected", [
    (0, 5e-7),            # warm-up starts at 0.1x
    (5, 5e-6 * 0.55),     # halfway: 0.1 + 0.9 * 5/10
    (9, 5e-6 * 0.91),
    (10, 5e-6),           # warm-up over
    (29, 5e-6),
    (30, 5e-7),           # first step: after 30 epochs
    (49, 5e-7),
    (50, 5e-8),
    (70, 5e-9),
    (79, 5e-9),
])
def test_paper_schedule_at_given_epochs(epoch, expected):
    assert lr_at_epoch(epoch, TrainConfig()) == pytest.approx(expected, rel=1e-9)


def test_tiny_schedule_and_no_warmup():
    tiny = load_config("tiny").train   # one warm-up epoch from 0.1x, one step near the end
    assert (tiny.warmup_epochs, tiny.warmup_factor, len(tiny.lr_steps)) == (1, 0.1, 1)
    base, step = tiny.base_lr, tiny.lr_steps[0]
    assert [lr_at_epoch(e, tiny) for e in range(tiny.epochs)] == pytest.approx(
        [0.1 * base] + [base] * (step - 1) + [0.1 * base] * (tiny.epochs - step))
    flat = TrainConfig(base_lr=1.0, warmup_epochs=0, lr_steps=(2,), lr_gamma=0.5)
    assert [lr_at_epoch(e, flat) for e in range(4)] == [1.0, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="epoch"):
        lr_at_epoch(-1, flat)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 3)             # weight x1, bias x2
        self.classifier_tmd = nn.Linear(3, 5, bias=False)  # x10
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_param_groups_factors_and_schedule():
    train = TrainConfig(base_lr=1.0, warmup_epochs=0, lr_steps=(1,), lr_gamma=0.1)
    model = _Toy()
    groups = {g["lr_factor"]: g for g in param_groups(model, train)}
    assert set(groups) == {1.0, 2.0, 10.0}
    assert groups[1.0]["params"] == [model.backbone.weight]
    assert groups[2.0]["params"] == [model.backbone.bias]
    assert groups[10.0]["params"] == [model.classifier_tmd.weight]
    assert all(g["weight_decay"] == train.weight_decay for g in groups.values())

    optimizer = build_optimizer(model, train)
    assert isinstance(optimizer, torch.optim.Adam)
    schedule = EpochSchedule(optimizer, train)
    schedule.set_epoch(1)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([0.1, 0.2, 1.0])
    other = EpochSchedule(build_optimizer(_Toy(), train), train)
    other.load_state_dict(schedule.state_dict())
    assert sorted(g["lr"] for g in other.optimizer.param_groups) == pytest.approx([0.1, 0.2, 1.0])


def test_backbone_lr_factor_scales_the_image_tower_only():
    """The backbone's weights at backbone_lr_factor, its biases at that times bias_lr_factor; the
    heads and the x10 TMD classifier keep their method factors."""
    train = TrainConfig(base_lr=1.0, warmup_epochs=0, lr_steps=(100,), backbone_lr_factor=0.25)
    model = _Toy()
    model.head = nn.Linear(3, 3)
    groups = {g["lr_factor"]: g["params"] for g in param_groups(model, train)}
    assert groups[0.25] == [model.backbone.weight]
    assert groups[0.5] == [model.backbone.bias]
    assert groups[10.0] == [model.classifier_tmd.weight]
    assert groups[1.0] == [model.head.weight] and groups[2.0] == [model.head.bias]


def test_gradient_centralisation_leaves_zero_mean_gradients():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    linear = nn.Linear(6, 5)
    embed = nn.Parameter(torch.zeros(7, 2))
    params = [*conv.parameters(), *linear.parameters(), embed]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) + 3.0   # clearly non-zero means
    bias_before = linear.bias.grad.clone()
    weight_before = linear.weight.grad.clone()
    centralize_gradients(params)
    for p in params:
        if p.dim() > 1:
            means = p.grad.mean(dim=tuple(range(1, p.dim())))
            assert torch.allclose(means, torch.zeros_like(means), atol=1e-6)
    torch.testing.assert_close(linear.bias.grad, bias_before)       # 1-D: untouched
    torch.testing.assert_close(linear.weight.grad,
                               weight_before - weight_before.mean(dim=1, keepdim=True))


def test_groups_follow_the_parameter_names():
    """The x10 group is exactly the shared TMD (temporal/frame) classifier of XTFCLIP, the x2 group
    its biases, every other trainable parameter the x1 group."""
    from xtfclip_lib.model import build_model

    cfg = load_config("quick")
    model = build_model(cfg, num_classes=5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_factor = {g["lr_factor"]: sorted(names[id(p)] for p in g["params"])
                 for g in param_groups(model, cfg.train)}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    biases = [n for n in trainable if n.endswith("bias")]
    assert by_factor[cfg.train.classifier_lr_factor] == ["classifier_tmd.weight"]
    assert by_factor[cfg.train.bias_lr_factor] == biases and biases
    assert by_factor[1.0] == [n for n in trainable if n not in biases and n != "classifier_tmd.weight"]
    assert sorted(sum(by_factor.values(), [])) == trainable
