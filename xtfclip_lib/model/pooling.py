"""Pooling over one axis: plain mean (TF-CLIP) or learned attention pooling (switch 2).

X-TFCLIP replaces every mean over frames, and TMD's mean over tokens, with a small attention
pooling module (METHOD §4, switch 2). Both classes share ``forward(x, dim)`` so the model picks
one at construction time; every pooling site gets its own instance (its own weights).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class MeanPool(nn.Module):
    """Mean over `dim` (TF-CLIP's temporal and token pooling)."""

    def forward(self, x: Tensor, dim: int) -> Tensor:
        """(..., N, ..., D) -> the same without axis `dim`."""
        return x.mean(dim=dim)


class AttentionPool(nn.Module):
    """Weighted sum over `dim` with weights softmax(Linear(tanh(Linear(x)))) (switch 2).

    Score network Linear(D -> D/2), tanh, Linear(D/2 -> 1), as in X-TFCLIP's temporal attention
    pooling; the softmax runs over the pooled axis, so the weights of each group sum to one.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, 1))

    def weights(self, x: Tensor, dim: int) -> Tensor:
        """Pooling weights, shaped like `x` with a last axis of 1; they sum to one over `dim`."""
        if dim % x.dim() == x.dim() - 1:
            raise ValueError(f"AttentionPool pools over a token/frame axis, not the feature axis "
                             f"(dim={dim} of a {x.dim()}-D input)")
        return torch.softmax(self.score(x), dim=dim)  # (..., N, ..., 1)

    def forward(self, x: Tensor, dim: int) -> Tensor:
        """(..., N, ..., D) -> the same without axis `dim`."""
        return (x * self.weights(x, dim)).sum(dim=dim)


def make_pool(dim: int, attention: bool) -> nn.Module:
    """`AttentionPool(dim)` when `attention` (switch 2), else `MeanPool()`."""
    return AttentionPool(dim) if attention else MeanPool()
