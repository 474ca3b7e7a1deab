"""Encoding tracklets with a model: test features, flip test-time augmentation, the CLIP-Memory.

* `encode_tracklets` runs the model over a list of tracklets (restricted random or dense
  sampling, optional mirrored copy), sharded over ranks and gathered (METHOD §1, §5).
* `extract_features` adds flip test-time augmentation (METHOD §6) and returns a `FeatureSet`
  (the embeddings of a list of tracklets, row i for tracklet i); `encode_lists` does so for
  every named list; `build_clip_memory` gives the per-identity CLIP-Memory (METHOD §2).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from xtfclip_lib import evaluation
from xtfclip_lib.config import Config
from xtfclip_lib.data import Tracklet, build_test_loader
from xtfclip_lib.engine.amp import autocast, autocast_dtype
from xtfclip_lib.engine.distributed import all_gather_rows, is_main_process
from xtfclip_lib.utils import tqdm  # console bars; none in a notebook kernel

__all__ = ["FeatureSet", "build_clip_memory", "encode_lists", "encode_tracklets", "eval_mode", "extract_features"]


@dataclass
class FeatureSet:
    """Features (embeddings) of a list of tracklets, row i for tracklet i."""
    features: np.ndarray   # (N, D) float32 embeddings, before any normalisation
    pids: np.ndarray       # (N,) int64, the dataset's own pids
    camids: np.ndarray     # (N,) int64
    names: list[str]       # (N,) tracklet names (the submission lists these)

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray, tracklets: Sequence[Tracklet]) -> "FeatureSet":
        features = features.numpy() if isinstance(features, torch.Tensor) else features
        return cls(np.ascontiguousarray(features, dtype=np.float32),
                   np.array([t.pid for t in tracklets], dtype=np.int64),
                   np.array([t.camid for t in tracklets], dtype=np.int64),
                   [t.name for t in tracklets])


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode and without gradients, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def encode_tracklets(model: nn.Module, tracklets: Sequence[Tracklet], cfg: Config,
                     device: torch.device, *, memory: bool = False, flip: bool = False,
                     rank: int = 0, world_size: int = 1, desc: str = "features") -> torch.Tensor:
    """(N, D) float32 CPU features of `tracklets`, in their order, on every rank.

    Test features are the eval-mode forward ``[f_img, f_proj, f_tmd]``; with ``memory=True`` they
    are ``model.memory_features`` (projected class token, no camera/frame embedding). Each rank
    encodes every `world_size`-th tracklet; rows are gathered back in order. Dense sampling
    gives N clips per tracklet, whose features are averaged.
    """
    shard = list(range(rank, len(tracklets), world_size))
    loader = build_test_loader(cfg, [tracklets[i] for i in shard], flip=flip)
    dtype = autocast_dtype(device, cfg.train.amp)
    rows, index = [], []
    with eval_mode(model):
        for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
            clips = batch["clips"].to(device, non_blocking=True)          # (B, N, T, 3, H, W)
            B, N = clips.shape[:2]
            camids = batch["camids"].to(device).repeat_interleave(N)      # (B*N,)
            with autocast(device, dtype):
                out = (model.memory_features(clips.flatten(0, 1)) if memory
                       else model(clips.flatten(0, 1), camids))           # (B*N, D)
            rows.append(out.float().reshape(B, N, -1).mean(dim=1).cpu())
            index.append(torch.as_tensor(shard)[batch["index"]])
    return all_gather_rows(torch.cat(rows), torch.cat(index), len(tracklets))


def extract_features(model: nn.Module, tracklets: Sequence[Tracklet], cfg: Config,
                     device: torch.device, *, flip_tta: bool | None = None, rank: int = 0,
                     world_size: int = 1, desc: str = "features") -> FeatureSet:
    """Test features of `tracklets`; with flip TTA (default ``cfg.features.flip_tta``) the mean of
    each tracklet's features and those of its horizontal mirror (METHOD §6)."""
    flip_tta = cfg.features.flip_tta if flip_tta is None else flip_tta
    kwargs = dict(rank=rank, world_size=world_size)
    embeddings = encode_tracklets(model, tracklets, cfg, device, desc=desc, **kwargs)
    if flip_tta:
        mirrored = encode_tracklets(model, tracklets, cfg, device, flip=True,
                                    desc=f"{desc} (flip)", **kwargs)
        embeddings = evaluation.flip_average(embeddings, mirrored)
    return FeatureSet.of(torch.as_tensor(embeddings), tracklets)


def build_clip_memory(model: nn.Module, tracklets: Sequence[Tracklet], label_of: dict[int, int],
                      cfg: Config, device: torch.device, *, rank: int = 0,
                      world_size: int = 1) -> torch.Tensor:
    """CLIP-Memory M (num_classes, E): per-identity mean of `memory_features` (METHOD §2, §6).

    Every training tracklet, test transform, restricted random sampling (whatever
    ``data.test_sampling`` says), model in eval mode: built once, before training.
    """
    rrs_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_sampling="rrs"))
    embeddings = encode_tracklets(model, tracklets, rrs_cfg, device, memory=True, rank=rank,
                                  world_size=world_size, desc="CLIP-Memory")
    labels = torch.tensor([label_of[t.pid] for t in tracklets])
    num_classes = len(label_of)
    sums = torch.zeros(num_classes, embeddings.shape[1]).index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts


def encode_lists(model: nn.Module, lists: dict[str, list[Tracklet]], cfg: Config,
                 device: torch.device, *, flip_tta: bool | None = None, rank: int = 0,
                 world_size: int = 1) -> dict[str, FeatureSet]:
    """`extract_features` of every named tracklet list."""
    return {name: extract_features(model, tracklets, cfg, device, flip_tta=flip_tta, rank=rank,
                                   world_size=world_size, desc=name)
            for name, tracklets in lists.items()}
