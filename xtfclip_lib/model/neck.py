"""Necks between a feature and its ID classifier: BatchNorm (TF-CLIP) or instance norm (switch 6).

The test feature is taken *before* the neck (METHOD §2), so a neck only shapes what the ID
classifiers see during training.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BatchNormNeck(nn.Module):
    """BatchNorm1d over the batch with its bias frozen at zero (the BNNeck of strong re-ID baselines)."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, D)."""
        return self.bn(x)


class InstanceNormNeck(nn.Module):
    """Each vector normalised over its own channels: zero mean, unit variance, no affine (switch 6).

    X-TFCLIP applies ``nn.InstanceNorm1d`` to (N, D) features, which torch reads as one unbatched
    (C=N, L=D) sample: every row is normalised over its D channels (biased variance, eps 1e-5).
    That is exactly a layer norm without weights, which is what this computes.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, D)."""
        return F.layer_norm(x, (self.dim,), eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_neck(dim: int, instance_norm: bool) -> nn.Module:
    """`InstanceNormNeck(dim)` when `instance_norm` (switch 6), else `BatchNormNeck(dim)`."""
    return InstanceNormNeck(dim) if instance_norm else BatchNormNeck(dim)
