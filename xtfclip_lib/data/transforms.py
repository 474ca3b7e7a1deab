"""Tracklet transforms on torchvision.transforms.v2, identical for every frame of a tracklet.

METHOD §1: training resizes to ``data.image_size_hw``, flips with probability ``data.flip_p``,
pads by ``data.pad`` and crops back at random, erases a random box with probability
``data.erasing_p`` and normalises with mean = std = 0.5; the *same* spatial augmentation goes to
all frames of one tracklet. The frames are therefore stacked into one ``tv_tensors.Video`` of shape
(T, C, H, W): a v2 transform draws its parameters once per call, so flip, crop offset and erased
box (its random fill of shape (C, h, w) included) are shared by the T frames.

Randomness comes from torch's default CPU generator, as in every v2 transform; loader.py seeds it
per sample so that augmentation is reproducible whatever the number of workers.
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from xtfclip_lib.config import DataConfig

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def as_video(frames: torch.Tensor) -> tv_tensors.Video:
    """(T, C, H, W) uint8 or float frames as a v2 Video, so transforms treat T as one clip."""
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T, C, H, W), got {tuple(frames.shape)}")
    return tv_tensors.Video(frames)


def build_train_transform(data: DataConfig) -> v2.Compose:
    """(T, C, H, W) uint8 -> (T, C, H, W) float32: resize, flip, pad + crop, normalise, erase.

    Erasing comes after normalisation and fills the box with standard-normal noise, like the
    pixel mode of the random erasing used by TF-CLIP; with the fill drawn once as (C, h, w) the
    box looks the same on every frame.
    """
    size_hw = tuple(data.image_size_hw)
    return v2.Compose([
        v2.Resize(size_hw, antialias=True),
        v2.RandomHorizontalFlip(p=data.flip_p),
        v2.Pad(data.pad),
        v2.RandomCrop(size_hw),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
        v2.RandomErasing(p=data.erasing_p, value="random"),
    ])


class HorizontalFlip(torch.nn.Module):
    """Deterministic horizontal flip (test-time flip augmentation, METHOD §4)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return F.horizontal_flip(frames)


def build_test_transform(data: DataConfig, flip: bool = False) -> v2.Compose:
    """(T, C, H, W) uint8 -> (T, C, H, W) float32: resize and normalise, optionally mirrored.

    `flip=True` gives the mirrored view whose features flip TTA averages with the plain one.
    """
    steps: list = [v2.Resize(tuple(data.image_size_hw), antialias=True)]
    if flip:
        steps.append(HorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(steps)
