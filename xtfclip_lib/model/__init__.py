"""The TF-CLIP / X-TFCLIP network on open_clip (METHOD §2, §4, §6).

`build_model` is the one place that reads ``cfg.features`` for the network: each switch picks a
module at construction time. Blocks live in their own files: ``backbone`` (open_clip ViT wrapper
and pretrained-weight loading), ``pooling``, ``tmd``, ``ssp`` (SSP and memory weighing), ``neck``,
``layers`` (primitives they share) and ``xtfclip`` (the assembled module).
"""
from __future__ import annotations

from xtfclip_lib.config import Config
from xtfclip_lib.model.backbone import (LOCAL_ARCHS, CLIPBackbone, quiet_open_clip, read_visual_state_dict,
                                        resize_position_embedding)
from xtfclip_lib.model.xtfclip import FRAME_CLASSIFIER, XTFCLIP, check_camera_ids, check_input_size

__all__ = ["build_model", "XTFCLIP", "CLIPBackbone", "LOCAL_ARCHS", "check_camera_ids", "check_input_size",
           "read_visual_state_dict", "resize_position_embedding", "FRAME_CLASSIFIER", "quiet_open_clip"]


def build_model(cfg: Config, num_classes: int, num_cameras: int = 6) -> XTFCLIP:
    """The network of `cfg` for `num_classes` training identities and `num_cameras` cameras.

    Builds the open_clip image tower at ``cfg.data.image_size_hw``, loads ``cfg.model.pretrained``
    (position grid resized bicubic with switch 1, bilinear without; nothing to resize for random
    initialisation) and assembles the heads. The CLIP-Memory is left to the caller
    (``model.set_memory``), since it needs the training data.
    """
    features = cfg.features
    interpolation = "bicubic" if features.bicubic_pos_embed else "bilinear"
    backbone = CLIPBackbone(cfg.model.arch, tuple(cfg.data.image_size_hw), interpolation,
                            grad_checkpointing=cfg.train.grad_checkpointing)
    if cfg.model.pretrained:
        backbone.load_pretrained(cfg.model.pretrained, cfg.model.pretrained_image_size)
    return XTFCLIP(backbone, num_classes, num_cameras, cfg.data.num_frames, cfg.model, features)
