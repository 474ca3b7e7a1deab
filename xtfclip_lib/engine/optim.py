"""Optimiser, learning-rate schedule and gradient centralisation (METHOD §3, §6).

Adam over parameter groups that differ only in their LR factor: biases train at
``train.bias_lr_factor`` times the base LR, the temporal (TMD) / frame classifier at
``train.classifier_lr_factor`` times; every group uses ``train.weight_decay``. The schedule is a
pure function of the epoch (`lr_at_epoch`), so resuming needs nothing but the epoch number.
"""
from __future__ import annotations

import bisect
from typing import Iterable

import torch
from torch import nn

from xtfclip_lib.config import TrainConfig
from xtfclip_lib.model import FRAME_CLASSIFIER   # the shared TMD classifier trains at classifier_lr_factor


def lr_factor_of(name: str, train: TrainConfig) -> float:
    """LR multiplier of the parameter called `name` (a key of ``model.named_parameters()``).

    Under DDP the names carry a ``module.`` prefix, which is ignored.
    """
    name = name.removeprefix("module.")
    scale = train.backbone_lr_factor if name.startswith("backbone.") else 1.0
    if name.startswith(FRAME_CLASSIFIER + "."):
        return train.classifier_lr_factor
    if name.endswith("bias"):
        return scale * train.bias_lr_factor
    return scale


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by LR factor, for `torch.optim.Adam`.

    Each group carries ``lr_factor`` so that `set_lr` can apply the schedule to it; frozen
    parameters (``requires_grad=False``) are left out.
    """
    by_factor: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            by_factor.setdefault(lr_factor_of(name, train), []).append(param)
    if not by_factor:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return [{"params": params, "lr_factor": factor, "lr": train.base_lr * factor,
             "weight_decay": train.weight_decay}
            for factor, params in sorted(by_factor.items())]


# ``train.optimizer_impl`` -> Adam's keyword arguments. "auto" leaves the choice to torch (a loop
# over tensors on CPU, foreach on CUDA); "foreach" gives the same numbers as the loop; "fused" runs
# one kernel per group, faster on CPU and GPU, but rounds differently (~1e-9 after a step).
OPTIMIZER_IMPLS: dict[str, dict[str, bool]] = {"auto": {}, "foreach": {"foreach": True},
                                               "fused": {"fused": True}}


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Adam:
    """Adam with coupled (L2) weight decay, as in the published TF-CLIP/X-TFCLIP solvers."""
    if train.optimizer_impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"train.optimizer_impl={train.optimizer_impl!r}; expected one of "
                         f"{list(OPTIMIZER_IMPLS)}")
    return torch.optim.Adam(param_groups(model, train), lr=train.base_lr,
                            weight_decay=train.weight_decay, **OPTIMIZER_IMPLS[train.optimizer_impl])


def lr_at_epoch(epoch: int, train: TrainConfig) -> float:
    """Base learning rate while training epoch `epoch` (0-based: the first epoch is 0).

    Linear warm-up from ``warmup_factor * base_lr`` at epoch 0 to ``base_lr`` at
    ``warmup_epochs``, then multiplied by ``lr_gamma`` once for every step in ``lr_steps`` that
    is <= `epoch` (a step at 30 means: after 30 epochs of training).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    warmup = 1.0
    if epoch < train.warmup_epochs:
        warmup = train.warmup_factor + (1.0 - train.warmup_factor) * epoch / train.warmup_epochs
    decay = train.lr_gamma ** bisect.bisect_right(sorted(train.lr_steps), epoch)
    return train.base_lr * warmup * decay


class EpochSchedule:
    """Sets every group's LR to ``lr_at_epoch(epoch) * lr_factor``; its state is the epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, train: TrainConfig):
        self.optimizer = optimizer
        self.train = train
        self.last_epoch = -1

    def set_epoch(self, epoch: int) -> float:
        """Apply the schedule for `epoch` and return the base LR."""
        base_lr = lr_at_epoch(epoch, self.train)
        for group in self.optimizer.param_groups:
            group["lr"] = base_lr * group.get("lr_factor", 1.0)
        self.last_epoch = epoch
        return base_lr

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        if self.last_epoch >= 0:
            self.set_epoch(self.last_epoch)


@torch.no_grad()
def centralize_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Gradient centralisation (Yong et al., ECCV 2020), in place.

    For every gradient with more than one dimension, subtract its mean over all dimensions but
    the first, so each output row's gradient has zero mean. METHOD §6: it touches embeddings and
    classifiers too, and under a gradient scaler it runs on the scaled gradients (centring is
    linear, so unscaling afterwards gives the same result).
    """
    for param in parameters:
        grad = param.grad
        if grad is not None and grad.dim() > 1:
            grad.sub_(grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True))
