"""Temporal Memory Diffusion (TMD): TF-CLIP's one-layer temporal module (METHOD §2).

TMC (temporal memory construction): each frame is summarised by a message token,
``Linear(mean over its tokens)``; the T message tokens of a tracklet exchange information with a
pre-LN multi-head self-attention (residual). MD (memory diffusion): each frame's message token is
appended to that frame's tokens and a standard pre-LN transformer block (attention, then a 4x MLP
with QuickGELU) runs over the tokens of every frame. Pooling over the tokens gives one feature per
frame, pooling over T gives the tracklet's temporal feature ``f_tmd``.

TMD runs on *detached* backbone tokens (the caller detaches): its losses train TMD and its
classifier, never the backbone.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from xtfclip_lib.model.layers import QuickGELU


class TemporalMemoryDiffusion(nn.Module):
    """One TMC + MD layer, then token and frame pooling.

    `pool_tokens` and `pool_frames` are modules with ``forward(x, dim)`` (mean or attention
    pooling, switch 2), chosen by the builder.
    """

    def __init__(self, width: int, heads: int, pool_tokens: nn.Module, pool_frames: nn.Module):
        super().__init__()
        if width % heads:
            raise ValueError(f"model.tmd_heads={heads} must divide the backbone width {width}")
        # TMC
        self.message_fc = nn.Linear(width, width)
        self.message_ln = nn.LayerNorm(width)
        self.message_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        # MD: a pre-LN transformer block over each frame's tokens plus its message token
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Linear(4 * width, width))
        self.pool_tokens = pool_tokens
        self.pool_frames = pool_frames

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, L, D) backbone tokens -> frame features (B, T, D) and f_tmd (B, D)."""
        B, T, L, D = tokens.shape
        # TMC: one message per frame, attending across the T frames of its tracklet
        message = self.message_fc(tokens.mean(dim=2))                    # (B, T, D)
        m = self.message_ln(message)
        message = message + self.message_attn(m, m, m, need_weights=False)[0]  # (B, T, D)
        # MD: the message joins its frame's tokens for one transformer block
        x = torch.cat([tokens, message.unsqueeze(2)], dim=2).reshape(B * T, L + 1, D)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]               # (B*T, L+1, D)
        x = x + self.mlp(self.ln_2(x))                                  # (B*T, L+1, D)
        frame_feats = self.pool_tokens(x, dim=1).reshape(B, T, D)       # (B, T, D)
        return frame_feats, self.pool_frames(frame_feats, dim=1)        # (B, T, D), (B, D)
