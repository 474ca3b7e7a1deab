"""Which frames of a tracklet, and which tracklets of a batch (METHOD §1).

Two kinds of sampling live here, both pure functions of explicit random generators so that a run
is reproducible from its seed alone, whatever the number of DataLoader workers:

* temporal: `train_frame_indices` (random temporal crop with a stride), `rrs_frame_indices`
  (restricted random sampling: one frame from each of T equal chunks) and `dense_frame_indices`
  (every run of T consecutive frames);
* identity: `IdentityBatchSampler` yields batches of P identities x K tracklets, and
  `DistributedIdentityBatchSampler` hands each rank a disjoint share of the same epoch.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

SeedLike = int | np.random.Generator


def _check_counts(num_frames: int, clip_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a tracklet needs at least one frame, got num_frames={num_frames}")
    if clip_len < 1:
        raise ValueError(f"clip length T must be >= 1, got {clip_len}")


def _spread(num_frames: int, clip_len: int) -> np.ndarray:
    """(T,) indices that repeat each of `num_frames` < T frames in order, as evenly as possible."""
    return (np.arange(clip_len) * num_frames) // clip_len


def train_frame_indices(num_frames: int, clip_len: int, stride: int,
                        rng: np.random.Generator) -> np.ndarray:
    """(T,) frame indices: a random temporal crop of T frames `stride` apart.

    The crop spans (T-1)*stride+1 frames and starts uniformly at random. A tracklet shorter than
    that keeps T evenly spaced frames by shrinking the stride to (n-1)//(T-1); one with fewer than
    T frames repeats its frames in order (e.g. n=3, T=8 -> 0 0 0 1 1 1 2 2), so short tracklets are
    still used rather than dropped.
    """
    _check_counts(num_frames, clip_len)
    if stride < 1:
        raise ValueError(f"sample stride must be >= 1, got {stride}")
    if num_frames < clip_len:
        return _spread(num_frames, clip_len)
    if clip_len > 1:
        stride = min(stride, (num_frames - 1) // (clip_len - 1))
    span = (clip_len - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1))
    return start + stride * np.arange(clip_len)


def rrs_frame_indices(num_frames: int, clip_len: int,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """(T,) frame indices by restricted random sampling: one frame from each of T equal chunks.

    Chunk i covers frames [floor(i*n/T), floor((i+1)*n/T)). With `rng` the frame is drawn
    uniformly inside its chunk (training-style RRS); without it (test time) it is the chunk's
    middle frame, the lower one of two when the chunk length is even, so test features do not
    depend on a seed. Tracklets with fewer than T frames repeat their frames in order.
    """
    _check_counts(num_frames, clip_len)
    if num_frames < clip_len:
        return _spread(num_frames, clip_len)
    edges = (np.arange(clip_len + 1) * num_frames) // clip_len
    starts, lengths = edges[:-1], np.diff(edges)
    if rng is None:
        return starts + (lengths - 1) // 2
    return starts + (rng.random(clip_len) * lengths).astype(np.int64)


def dense_frame_indices(num_frames: int, clip_len: int) -> np.ndarray:
    """(N, T) frame indices: every consecutive chunk of T frames, N = ceil(n / T).

    The last chunk, when short, is padded by repeating its last frame, so every frame is seen
    exactly once plus padding; features of the N clips are averaged by the caller.
    """
    _check_counts(num_frames, clip_len)
    num_chunks = -(-num_frames // clip_len)
    flat = np.minimum(np.arange(num_chunks * clip_len), num_frames - 1)
    return flat.reshape(num_chunks, clip_len)


# ------------------------------------------------------------------------------------------------
# Identity batches


def as_seed(seed: SeedLike) -> int:
    """An int seed from an int or by one draw from a numpy Generator (which then advances)."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed)
    raise TypeError(f"seed must be an int or a numpy Generator, got {seed!r}")


class IdentityBatchSampler:
    """Batches of P identities x K tracklets each (METHOD §1: paper 3 x 6), as lists of indices.

    Every epoch each identity's tracklets are shuffled and cut into chunks of K (the remainder is
    dropped; an identity with fewer than K tracklets fills one chunk by drawing with replacement).
    Batches then take one chunk from each of P distinct identities chosen at random among those
    with chunks left, until fewer than P remain. An epoch is therefore about one pass over the
    training tracklets, and at least one pass over the identities in groups of P. Within a batch
    the K tracklets of an identity are adjacent: indices [i*K, (i+1)*K) belong to identity i.

    The plan of epoch e depends only on (seed, e): call `set_epoch(e)` before iterating (the
    DataLoader wrapper in loader.py does it), which also makes a resumed run draw the same batches.

    Args:
        labels: (N,) identity of each tracklet (any hashable ints; train labels or raw pids).
        num_ids_per_batch: P.
        num_tracklets_per_id: K.
        seed: an int, or a numpy Generator from which one base seed is drawn.
    """

    def __init__(self, labels: Sequence[int], num_ids_per_batch: int, num_tracklets_per_id: int,
                 seed: SeedLike = 0):
        if num_ids_per_batch < 1 or num_tracklets_per_id < 1:
            raise ValueError(f"P (num_ids_per_batch={num_ids_per_batch}) and K "
                             f"(num_tracklets_per_id={num_tracklets_per_id}) must both be >= 1")
        by_id: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_id[int(label)].append(index)
        if len(by_id) < num_ids_per_batch:
            raise ValueError(
                f"cannot build batches of P={num_ids_per_batch} identities x "
                f"K={num_tracklets_per_id} tracklets: the training set has only {len(by_id)} "
                f"identities; lower data.num_ids_per_batch (P) to at most {len(by_id)}")
        self.ids = sorted(by_id)
        self.index_of_id = [np.asarray(by_id[i], dtype=np.int64) for i in self.ids]
        self.num_ids_per_batch = num_ids_per_batch
        self.num_tracklets_per_id = num_tracklets_per_id
        self.seed = as_seed(seed)
        self.epoch = 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    @property
    def batch_size(self) -> int:
        return self.num_ids_per_batch * self.num_tracklets_per_id

    def set_epoch(self, epoch: int) -> None:
        """Select which epoch's plan the next iteration yields."""
        self.epoch = int(epoch)

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of `epoch` (default: the current one), each P*K tracklet indices."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        P, K = self.num_ids_per_batch, self.num_tracklets_per_id
        chunks: list[list[np.ndarray]] = []
        for indices in self.index_of_id:
            if len(indices) < K:
                picked = rng.choice(indices, size=K, replace=True)
            else:
                picked = rng.permutation(indices)
                picked = picked[: len(picked) - len(picked) % K]
            chunks.append(list(picked.reshape(-1, K)))
        left = np.array([len(c) for c in chunks])
        batches: list[list[int]] = []
        while (left > 0).sum() >= P:
            available = np.flatnonzero(left > 0)
            chosen = rng.choice(available, size=P, replace=False)
            batch: list[int] = []
            for i in chosen:
                left[i] -= 1
                batch.extend(int(t) for t in chunks[i][left[i]])
            batches.append(batch)
        self._plan_cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.plan())

    def __len__(self) -> int:
        return len(self.plan())


class DistributedIdentityBatchSampler(IdentityBatchSampler):
    """`IdentityBatchSampler` for one of `world_size` ranks: a disjoint share of each epoch.

    Every rank builds the same plan from the same seed and takes batches rank, rank+W, ...; the
    plan is cut to a multiple of W first, so all ranks run the same number of steps (DDP would
    hang otherwise) and no batch is seen twice.
    """

    def __init__(self, labels: Sequence[int], num_ids_per_batch: int, num_tracklets_per_id: int,
                 seed: SeedLike = 0, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
        super().__init__(labels, num_ids_per_batch, num_tracklets_per_id, seed)
        self.rank = rank
        self.world_size = world_size

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        full = super().plan(epoch)
        per_rank = len(full) // self.world_size
        if per_rank == 0:
            raise ValueError(
                f"an epoch has {len(full)} batches of P={self.num_ids_per_batch} x "
                f"K={self.num_tracklets_per_id}, fewer than world_size={self.world_size}; "
                "lower P or K, or use fewer processes")
        return full[self.rank: per_rank * self.world_size: self.world_size]
