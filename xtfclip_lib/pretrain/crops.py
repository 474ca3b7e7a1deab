"""Crops in memory: decoded square crops of tracklets, the training batches drawn from them, augmentation.

Every crop pretraining sees is decoded once (`_load_crops`: up to a few evenly spaced frames per
tracklet, resized to a square) into a `_CropBank`. `_BatchSampler` draws each step's identities,
tracklets, crops and caption tokens from it with its own seeded generator; `_augment` is the mild
photometric and geometric augmentation of the training crops, drawn from a torch generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xtfclip_lib.data import Tracklet, decode_frame
from xtfclip_lib.pretrain.captions import DROP_ORDER, _Captioner
from xtfclip_lib.utils import tqdm  # console bars; none in a notebook kernel


@dataclass
class _CropBank:
    """Decoded square crops of a set of tracklets: frames (M, 3, S, S) uint8 and per-tracklet rows."""
    tracklets: list[Tracklet]
    frames: Tensor
    rows: list[np.ndarray]      # rows[i]: indices into `frames` of tracklets[i]'s crops

    def numpy_frames(self, i: int) -> np.ndarray:
        return self.frames[self.rows[i]].permute(0, 2, 3, 1).numpy()      # (N, S, S, 3)


def _evenly_spaced(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _load_crops(tracklets: Sequence[Tracklet], image_size: int, per_tracklet: int,
                progress: bool) -> _CropBank:
    """Decode up to `per_tracklet` evenly spaced frames of each tracklet, resized to a square."""
    frames, rows, count = [], [], 0
    for t in tqdm(tracklets, desc="decode", unit="tracklet", disable=not progress, leave=False):
        picks = _evenly_spaced(len(t.frames), per_tracklet)
        frames += [decode_frame(t.frames[i], (image_size, image_size)) for i in picks]
        rows.append(np.arange(count, count + len(picks)))
        count += len(picks)
    stacked = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    return _CropBank(list(tracklets), stacked, rows)


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """(N, 3, S, S) uint8 -> (N, 3, S, S) float, mildly augmented and normalised (mean = std = 0.5).

    Random resized crop (area 70-100 %, aspect within +-15 %), horizontal flip, brightness,
    contrast and saturation within about +-15 %. Hue is left alone: the captions name colours.
    """
    N = images.shape[0]
    x = images.float() / 255.0

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(N, generator=generator)

    area, aspect = uniform(0.70, 1.0), torch.exp(uniform(math.log(0.87), math.log(1.15)))
    scale_w = (area * aspect).sqrt().clamp(max=1.0)
    scale_h = (area / aspect).sqrt().clamp(max=1.0)
    shift_x = (1 - scale_w) * uniform(-1.0, 1.0)
    shift_y = (1 - scale_h) * uniform(-1.0, 1.0)
    flip = torch.where(torch.rand(N, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(N, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale_w * flip, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = scale_h, shift_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness, contrast, saturation = uniform(0.85, 1.15), uniform(0.85, 1.15), uniform(0.85, 1.15)
    x = x * brightness[:, None, None, None]
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    x = grey + (x - grey) * contrast[:, None, None, None]
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = luma + (x - luma) * saturation[:, None, None, None]
    return (x.clamp(0, 1) - 0.5) / 0.5


def _normalise(images: Tensor) -> Tensor:
    return (images.float() / 255.0 - 0.5) / 0.5


class _BatchSampler:
    """Training batches: distinct identities, one tracklet each, a few of its crops (seeded)."""

    def __init__(self, bank: _CropBank, pids: Sequence[int], captioner: _Captioner, tokenizer,
                 batch_size: int, frames_per_tracklet: int, seed: int):
        self.bank, self.pids, self.captioner, self.tokenizer = bank, list(pids), captioner, tokenizer
        self.batch_size, self.frames_per_tracklet = batch_size, frames_per_tracklet
        self.by_pid: dict[int, dict[str, list[int]]] = {}
        for i, t in enumerate(bank.tracklets):
            self.by_pid.setdefault(t.pid, {"aerial": [], "ground": []})[t.platform].append(i)
        self.tokens = {key: tokenizer([text])[0] for key, text in captioner.full.items()}
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC11B]))

    def draw(self, dropout: float) -> tuple[Tensor, Tensor]:
        """(F, B, 3, S, S) uint8 crops and (B, L) caption tokens of B distinct captions.

        Identities come in random order; each picks aerial or ground with equal chance (when it
        has both), a tracklet of that platform and F of its crops. An identity whose caption is
        already in the batch is skipped: ClipLoss takes every other caption as a negative. With
        `dropout` > 0 each optional phrase is left out with that probability, so that the text
        tower learns phrases rather than one sentence per person.
        """
        rng, bank = self.rng, self.bank
        chosen, seen = [], set()
        for pid in rng.permutation(self.pids):
            own = self.by_pid[int(pid)]
            platforms = [p for p in ("aerial", "ground") if own[p]]
            index = int(rng.choice(own[platforms[int(rng.integers(len(platforms)))]]))
            text = self.captioner.full[(int(pid), bank.tracklets[index].camid)]
            if text not in seen:
                seen.add(text)
                chosen.append(index)
            if len(chosen) == self.batch_size:
                break
        rows = np.stack([bank.rows[i][rng.choice(len(bank.rows[i]), self.frames_per_tracklet,
                                                 replace=len(bank.rows[i]) < self.frames_per_tracklet)]
                         for i in chosen], 1)                                 # (F, B) crop rows
        keys = [(bank.tracklets[i].pid, bank.tracklets[i].camid) for i in chosen]
        if dropout > 0:
            text = self.tokenizer([self.captioner(pid, cam, {n for n in DROP_ORDER if rng.random() < dropout})
                                   for pid, cam in keys])
        else:
            text = torch.stack([self.tokens[key] for key in keys])
        images = bank.frames[torch.from_numpy(rows.reshape(-1))]
        return images.view(*rows.shape, *bank.frames.shape[1:]), text

