"""Offline pretraining of the tiny CLIP of the embedded default (METHOD §8).

Contrastive image-text pretraining on the training identities' crops with captions written from
their attributes, colours and camera; zero-shot caption retrieval before and after. ``captions``
(word tables and sentences), ``colours`` (clothing colours from pixels, and how captions say
them), ``crops`` (decoded crops, training batches, augmentation), ``evaluate`` (the CLIP and its
zero-shot and feature-spread measures), ``config`` (`PretrainConfig`, every option that decides
what is computed) and ``loop`` (`pretrain_tiny_clip`).

`PretrainConfig` is imported here; the other names on first use (PEP 562), so that the command
line's ``--help`` shows its defaults without loading torch or open_clip.
"""
from __future__ import annotations

from xtfclip_lib.pretrain.config import PretrainConfig

__all__ = ["PretrainConfig", "PretrainTimeout", "caption_for", "make_captions", "pretrain_tiny_clip"]


def __getattr__(name: str):
    if name in ("caption_for", "make_captions"):
        from xtfclip_lib.pretrain import captions as module
    elif name in ("PretrainTimeout", "pretrain_tiny_clip"):
        from xtfclip_lib.pretrain import loop as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
