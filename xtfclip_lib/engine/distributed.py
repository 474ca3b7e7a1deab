"""Data-parallel training on torch.distributed, launched by ``torchrun``.

``torchrun --nproc_per_node N -m xtfclip_lib train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
`setup_distributed` reads them and joins the process group (nccl on CUDA, gloo on CPU). Without
them everything runs as a single process and every helper here is a no-op. Only the main process
(rank 0) logs, writes files and evaluates; features are computed on every rank and gathered on
rank 0 (`all_gather_rows`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``train.device`` ("auto", "cpu", "cuda") -> a torch device; "cuda" without CUDA is an error."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device={preference!r}; expected 'auto', 'cpu' or 'cuda'")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but torch finds no CUDA device; use 'auto' or 'cpu'")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the torchrun process group when WORLD_SIZE > 1, else return a single-process env."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size <= 1:
        return DistEnv(device=device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        logger.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 and whenever torch.distributed is not in use."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_rows(rows: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Collect per-rank rows into one (total, ...) tensor ordered by `index`, on every rank.

    rows: (n_r, ...) computed by this rank for the items at positions `index` (n_r,) of the full
    list. Ranks may hold different n_r (shards of uneven size), so each pads to the largest
    shard before ``all_gather``. Without a process group it just puts `rows` in order.
    """
    if not (dist.is_available() and dist.is_initialized()):
        out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        out[index.to(rows.device)] = rows
        return out
    home = rows.device
    comm_device = rows.device if dist.get_backend() != "gloo" else torch.device("cpu")
    rows, index = rows.to(comm_device), index.to(comm_device, torch.int64)
    count = torch.tensor([rows.shape[0]], device=comm_device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    largest = int(max(c.item() for c in counts))
    padded_rows = torch.zeros((largest, *rows.shape[1:]), dtype=rows.dtype, device=comm_device)
    padded_rows[: rows.shape[0]] = rows
    padded_index = torch.full((largest,), -1, dtype=torch.int64, device=comm_device)
    padded_index[: index.shape[0]] = index
    all_rows = [torch.empty_like(padded_rows) for _ in counts]
    all_index = [torch.empty_like(padded_index) for _ in counts]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_index, padded_index)
    rows_cat, index_cat = torch.cat(all_rows), torch.cat(all_index)
    keep = index_cat >= 0
    assert int(keep.sum()) == total, f"gathered {int(keep.sum())} rows, expected {total}"
    out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype, device=comm_device)
    out[index_cat[keep]] = rows_cat[keep]
    return out.to(home)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op in a single process); returns it."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo" and tensor.device.type != "cpu":
            cpu = tensor.cpu()
            dist.all_reduce(cpu)
            tensor.copy_(cpu)
        else:
            dist.all_reduce(tensor)
    return tensor


def broadcast_object(value):
    """Rank 0's `value` on every rank (small Python values such as a stop decision)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
