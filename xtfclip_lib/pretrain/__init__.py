"""Offline pretraining of the tiny CLIP of the embedded default (METHOD §8).

Contrastive image-text pretraining on the training identities' crops with captions written from
their attributes, colours and camera; zero-shot caption retrieval before and after.
"""
from __future__ import annotations

from xtfclip_lib.pretrain.loop import PretrainTimeout, caption_for, make_captions, pretrain_tiny_clip

__all__ = ["PretrainTimeout", "caption_for", "make_captions", "pretrain_tiny_clip"]
