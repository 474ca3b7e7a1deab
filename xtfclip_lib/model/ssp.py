"""Sequence-Specific Prompt (SSP) and the CLIP-Memory update it drives (METHOD §2, switch 5).

The CLIP-Memory M (K identities x E) stands in for CLIP's text side. For each tracklet, SSP reads
M and the tracklet's projected tokens and returns an update of every memory row; the I2T logits
are then ``f_proj . M'^T``. TF-CLIP adds the update (M' = M + SSP); X-TFCLIP blends with a learned
weight (M' = s M + (1 - s) SSP, s = sigmoid(w)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtfclip_lib.model.layers import QuickGELU


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections, on torch's scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.ssp_heads={heads} must divide the embedding size {dim}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        """query (B, N, E), context (B, M, E) -> (B, N, E)."""
        B, N, E = query.shape
        M = context.shape[1]
        q = self.q(query).reshape(B, N, self.heads, E // self.heads).transpose(1, 2)   # (B, h, N, E/h)
        k = self.k(context).reshape(B, M, self.heads, E // self.heads).transpose(1, 2)  # (B, h, M, E/h)
        v = self.v(context).reshape(B, M, self.heads, E // self.heads).transpose(1, 2)  # (B, h, M, E/h)
        x = F.scaled_dot_product_attention(q, k, v)                                     # (B, h, N, E/h)
        return self.drop(self.out(x.transpose(1, 2).reshape(B, N, E)))


class SSPDecoderLayer(nn.Module):
    """Pre-LN decoder layer: self-attention over the memory rows, cross-attention to the video, MLP."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), QuickGELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, memory: Tensor, visual: Tensor) -> Tensor:
        """memory (B, K, E), visual (B, L, E) -> (B, K, E)."""
        h = self.norm1(memory)
        memory = memory + self.self_attn(h, h)
        memory = memory + self.cross_attn(self.norm2(memory), visual)
        return memory + self.mlp(self.norm3(memory))


class SequenceSpecificPrompt(nn.Module):
    """SSP: LayerNorm/Linear projections in, `layers` decoder layers, LayerNorm/Linear out.

    Dropout 0.1 inside the decoder follows TF-CLIP's published SSP.
    """

    def __init__(self, dim: int, layers: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.memory_in = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.visual_in = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.decoder = nn.ModuleList(SSPDecoderLayer(dim, heads, dropout) for _ in range(layers))
        self.memory_out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, memory: Tensor, visual: Tensor) -> Tensor:
        """memory (B, K, E), visual tokens (B, L, E) -> per-tracklet memory update (B, K, E)."""
        visual = self.visual_in(visual)
        x = self.memory_in(memory)
        for layer in self.decoder:
            x = layer(x, visual)
        return self.memory_out(x)


class AddMemoryUpdate(nn.Module):
    """TF-CLIP: M' = M + SSP(M, video)."""

    def forward(self, memory: Tensor, update: Tensor) -> Tensor:
        """(B, K, E), (B, K, E) -> (B, K, E)."""
        return memory + update


class LearnableMemoryWeight(nn.Module):
    """X-TFCLIP (switch 5): M' = s M + (1 - s) SSP(M, video), s = sigmoid(w), w learned.

    w starts at `init` (0.5 in the published code, so s starts at sigmoid(0.5) ~ 0.62).
    """

    def __init__(self, init: float):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(init)))

    def forward(self, memory: Tensor, update: Tensor) -> Tensor:
        """(B, K, E), (B, K, E) -> (B, K, E)."""
        s = torch.sigmoid(self.weight)
        return s * memory + (1 - s) * update


def make_memory_update(learnable: bool, init: float) -> nn.Module:
    """`LearnableMemoryWeight(init)` when `learnable` (switch 5), else `AddMemoryUpdate()`."""
    return LearnableMemoryWeight(init) if learnable else AddMemoryUpdate()
