"""DataLoaders of tracklet clips: decoding with a frame cache, training and test datasets.

Training batches are dicts ``clips`` (B, T, 3, H, W) float, ``pids`` (B,) long training labels,
``camids`` (B,) long, ``frame_idx`` (B, T) long (positions in each tracklet's frame list), with
B = P*K from the identity sampler. Test batches are ``clips`` (B, N, T, 3, H, W), ``index`` (B,)
positions in the given tracklet list and ``camids`` (B,); N = 1 for restricted random sampling
and the number of T-frame chunks for dense sampling (batch size 1 then, as N varies).

Reproducibility: every random choice of a training sample (frames, flip, crop, erased box) is
drawn from a seed that the batch sampler derives from (seed, epoch, rank, batch, slot). Results
thus depend on the seed and epoch only, not on the number of workers or on the global RNG, which
is restored after each sample.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from xtfclip_lib.config import Config
from xtfclip_lib.data.dataset import Tracklet
from xtfclip_lib.data.sampling import (DistributedIdentityBatchSampler, SeedLike, as_seed,
                                       dense_frame_indices, rrs_frame_indices, train_frame_indices)
from xtfclip_lib.data.transforms import as_video, build_test_transform, build_train_transform

logger = logging.getLogger(__name__)

# Decoded frames kept per process, all loaders of one size together. Workers split this budget.
CACHE_BUDGET_BYTES = 4 * 1024**3
TEST_SAMPLINGS = ("rrs", "dense")


# ------------------------------------------------------------------------------------------------
# Decoding


def decode_frame(path: str, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame, resized to `size_hw` at decode time.

    JPEG draft mode lets libjpeg decode large frames at 1/2, 1/4 or 1/8 scale (never below the
    target) before the antialiased resize: much faster for the real data's large ground crops,
    and it bounds what the cache holds. Unreadable files raise ValueError naming the path.
    """
    height, width = size_hw
    try:
        with Image.open(path) as image:
            image.draft("RGB", (width, height))
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"frame {path} not found; was the dataset moved or deleted "
                                "after it was scanned?") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot decode image frame ({exc}); the file is corrupt or "
                         "not an image") from None


class FrameCache:
    """Decoded, resized uint8 frames kept in memory, keyed by path, modification time and size.

    Each JPEG is decoded once; later epochs read the array back, so an epoch over the synthetic
    set is not bound by decoding. The key includes the file's mtime and size (one stat per use,
    microseconds) so a dataset regenerated in place is never served stale frames (METHOD §7). Frames are stored at the network input size, so memory is
    bounded by (frames seen) x H x W x 3 bytes and by `max_bytes`, past which new frames are
    decoded but no longer kept (no eviction: keeping what is there beats thrashing).
    """

    def __init__(self, size_hw: tuple[int, int], max_bytes: int = CACHE_BUDGET_BYTES,
                 enabled: bool = True):
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.max_bytes = int(max_bytes)
        self.enabled = enabled
        self.frames: dict[tuple[str, int, int], np.ndarray] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._warned_full = False

    def get(self, path: str) -> np.ndarray:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"frame {path} not found; was the dataset moved or deleted "
                                    "after it was scanned?") from None
        key = (path, stat.st_mtime_ns, stat.st_size)
        frame = self.frames.get(key)
        if frame is not None:
            self.hits += 1
            return frame
        self.misses += 1
        frame = decode_frame(path, self.size_hw)
        if self.enabled:
            if self.nbytes + frame.nbytes <= self.max_bytes:
                self.frames[key] = frame
                self.nbytes += frame.nbytes
            elif not self._warned_full:
                self._warned_full = True
                logger.warning("frame cache full at %.1f GiB (%d frames); further frames are "
                               "decoded on every use", self.nbytes / 1024**3, len(self.frames))
        return frame

    def clip(self, tracklet: Tracklet, indices: np.ndarray) -> torch.Tensor:
        """(T, 3, H, W) uint8 frames `indices` of `tracklet`."""
        stacked = np.stack([self.get(tracklet.frames[int(i)]) for i in indices])  # (T, H, W, 3)
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()

    def stats(self) -> dict[str, float]:
        """Hits, misses, frames kept and MiB used so far."""
        return {"hits": self.hits, "misses": self.misses, "frames": len(self.frames),
                "mib": self.nbytes / 1024**2}

    def clear(self) -> None:
        self.frames.clear()
        self.nbytes = 0


_SHARED_CACHES: dict[tuple[int, int], FrameCache] = {}


def shared_frame_cache(size_hw: Sequence[int], enabled: bool = True) -> FrameCache:
    """The process-wide cache for frames of `size_hw` (train, memory and test loaders share it);
    a private, non-storing cache when `enabled` is False."""
    key = (int(size_hw[0]), int(size_hw[1]))
    if not enabled:
        return FrameCache(key, enabled=False)
    if key not in _SHARED_CACHES:
        _SHARED_CACHES[key] = FrameCache(key)
    return _SHARED_CACHES[key]


def _run_seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """`fn()` with torch's CPU generator seeded by `seed`, restoring its state afterwards.

    Only the CPU generator is touched (torch.manual_seed would also reseed CUDA generators).
    """
    state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    try:
        return fn()
    finally:
        torch.default_generator.set_state(state)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_subclass(torch.Tensor)


# ------------------------------------------------------------------------------------------------
# Datasets


class TrainClipDataset(Dataset):
    """Training samples: item (tracklet index, sample seed) -> dict of one clip and its labels."""

    def __init__(self, cfg: Config, tracklets: Sequence[Tracklet], label_of: dict[int, int],
                 cache: FrameCache):
        missing = sorted({t.pid for t in tracklets} - set(label_of))
        if missing:
            raise KeyError(f"training pids {missing[:5]} have no label in label_of; build it with "
                           "relabel(train_tracklets)")
        self.tracklets = list(tracklets)
        self.labels = [label_of[t.pid] for t in self.tracklets]
        self.num_frames = cfg.data.num_frames
        self.stride = cfg.data.sample_stride
        self.transform = build_train_transform(cfg.data)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = item
        tracklet = self.tracklets[index]
        rng = np.random.default_rng(seed)
        frame_idx = train_frame_indices(len(tracklet.frames), self.num_frames, self.stride, rng)
        frames = self.cache.clip(tracklet, frame_idx)
        clip = _run_seeded(seed, lambda: self.transform(as_video(frames)))
        return {"clips": _plain(clip),
                "pids": torch.tensor(self.labels[index], dtype=torch.long),
                "camids": torch.tensor(tracklet.camid, dtype=torch.long),
                "frame_idx": torch.from_numpy(frame_idx.astype(np.int64))}


class TestClipDataset(Dataset):
    """Test samples: tracklet index -> (N, T, 3, H, W) clips, deterministic (no randomness)."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, cfg: Config, tracklets: Sequence[Tracklet], flip: bool, cache: FrameCache):
        if cfg.data.test_sampling not in TEST_SAMPLINGS:
            raise ValueError(f"data.test_sampling={cfg.data.test_sampling!r}; expected one of "
                             f"{list(TEST_SAMPLINGS)}")
        self.tracklets = list(tracklets)
        self.num_frames = cfg.data.num_frames
        self.dense = cfg.data.test_sampling == "dense"
        self.transform = build_test_transform(cfg.data, flip=flip)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.tracklets)

    def frame_indices(self, index: int) -> np.ndarray:
        """(N, T) frame indices of tracklet `index`."""
        num_frames = len(self.tracklets[index].frames)
        if self.dense:
            return dense_frame_indices(num_frames, self.num_frames)
        return rrs_frame_indices(num_frames, self.num_frames)[None]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tracklet = self.tracklets[index]
        chunks = self.frame_indices(index)
        clips = torch.stack([_plain(self.transform(as_video(self.cache.clip(tracklet, idx))))
                             for idx in chunks])
        return {"clips": clips,
                "index": torch.tensor(index, dtype=torch.long),
                "camids": torch.tensor(tracklet.camid, dtype=torch.long)}


# ------------------------------------------------------------------------------------------------
# Samplers and loaders


class SeededBatchSampler:
    """Wraps an identity batch sampler: each index becomes (index, per-sample seed).

    The seed of slot s of batch b is a hash of (base seed, epoch, rank, b, s), so a tracklet drawn
    twice gets two augmentations and the epoch's batches are reproducible. Iterating advances the
    epoch by one; `set_epoch(e)` (call it before each epoch, e.g. on resume) sets it explicitly.
    """

    def __init__(self, sampler: DistributedIdentityBatchSampler):
        self.sampler = sampler
        self.epoch = 0          # the epoch the next iteration yields
        self._len_epoch = 0     # the epoch len() describes: the one set or last started

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self._len_epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler.plan(self._len_epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # A generator reads the epoch at its first batch, not at iter(): DataLoader may call
        # iter() on its batch sampler twice (persistent workers), and only one of them runs.
        epoch = self.epoch
        self._len_epoch, self.epoch = epoch, epoch + 1
        for b, batch in enumerate(self.sampler.plan(epoch)):
            seeds = np.random.SeedSequence(
                [self.sampler.seed, epoch, self.sampler.rank, b]).generate_state(len(batch), np.uint32)
            yield [(int(i), int(s)) for i, s in zip(batch, seeds)]


def _worker_init(worker_id: int) -> None:
    """Share the frame-cache budget among workers and keep each worker to one CPU thread."""
    torch.set_num_threads(1)
    info = get_worker_info()
    cache = getattr(info.dataset, "cache", None)
    if cache is not None:
        cache.max_bytes = max(cache.max_bytes // info.num_workers, 0)


def _loader_kwargs(cfg: Config, seed: int, persistent: bool) -> dict[str, Any]:
    num_workers = cfg.data.num_workers
    if num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
    return {"num_workers": num_workers,
            "worker_init_fn": _worker_init if num_workers > 0 else None,
            # a persistent worker keeps its frame cache from one epoch to the next
            "persistent_workers": persistent and num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "generator": torch.Generator().manual_seed(seed)}


def build_train_loader(cfg: Config, tracklets: Sequence[Tracklet], label_of: dict[int, int],
                       seed: SeedLike | torch.Generator | None = None, rank: int = 0,
                       world_size: int = 1) -> DataLoader:
    """Training loader: batches of P identities x K tracklets, T frames each, augmented.

    `seed` (an int, or a numpy or torch Generator from which one seed is drawn; default
    ``cfg.train.seed``) fixes sampling and augmentation. With ``world_size > 1`` each rank gets a
    disjoint share of every epoch's batches (same number on every rank). Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch to make epochs
    addressable (resume); otherwise each pass over the loader moves to the next epoch.
    Yields dict(clips (B, T, 3, H, W) float, pids (B,) long labels, camids (B,) long,
    frame_idx (B, T) long) with B = P*K.
    """
    if not tracklets:
        raise ValueError("build_train_loader: no training tracklets")
    if isinstance(seed, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=seed))
    seed = as_seed(cfg.train.seed if seed is None else seed)
    cache = shared_frame_cache(cfg.data.image_size_hw, cfg.data.cache_frames)
    dataset = TrainClipDataset(cfg, tracklets, label_of, cache)
    sampler = DistributedIdentityBatchSampler(dataset.labels, cfg.data.num_ids_per_batch,
                                              cfg.data.num_tracklets_per_id, seed,
                                              rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_sampler=SeededBatchSampler(sampler),
                      **_loader_kwargs(cfg, seed, persistent=True))


def build_test_loader(cfg: Config, tracklets: Sequence[Tracklet], flip: bool = False,
                      batch_size: int | None = None) -> DataLoader:
    """Test loader over `tracklets` in order, no augmentation (`flip`: mirrored copy for TTA).

    ``cfg.data.test_sampling`` picks "rrs" (N = 1 clip of T frames, batch ``cfg.eval.batch_size``)
    or "dense" (N = ceil(n / T) clips, batch size 1). Yields dict(clips (B, N, T, 3, H, W) float,
    index (B,) long positions in `tracklets`, camids (B,) long).
    """
    if not tracklets:
        raise ValueError("build_test_loader: no tracklets to load")
    cache = shared_frame_cache(cfg.data.image_size_hw, cfg.data.cache_frames)
    dataset = TestClipDataset(cfg, tracklets, flip, cache)
    if batch_size is None:
        batch_size = 1 if dataset.dense else cfg.eval.batch_size
    if dataset.dense and batch_size != 1:
        raise ValueError(f"dense test sampling gives a different number of clips per tracklet; "
                         f"use batch_size=1, got {batch_size}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                      **_loader_kwargs(cfg, cfg.train.seed, persistent=False))


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Point a training loader at `epoch` (same batches and augmentation as any run at that epoch)."""
    sampler = loader.batch_sampler
    if not hasattr(sampler, "set_epoch"):
        raise TypeError("set_loader_epoch expects a loader from build_train_loader")
    sampler.set_epoch(epoch)
