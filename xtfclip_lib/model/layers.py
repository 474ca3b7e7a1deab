"""Primitives shared by the model's blocks (as timm's ``layers/``): nothing here knows the method."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["QuickGELU"]


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI CLIP was trained with (METHOD §6)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)
