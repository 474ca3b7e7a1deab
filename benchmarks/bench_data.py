"""Time scanning an AG-VPReID root and one training epoch of data loading, cache cold and warm.

    python benchmarks/bench_data.py [--root data/synthetic-ag] [--preset tiny] [--num-workers 0]

Steps, all in one process on the same data: scan (`load_agvpreid`); epoch 0 with an empty frame
cache (every frame decoded); epoch 0 again (every frame from the cache); epoch 1 (other temporal
crops: partly cached); epoch 1 with the cache off (decode-bound reference for the same work).
Writes results/benchmarks/data_loading.json. The ratio warm/cold is what to compare across
machines, not the absolute rates.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import write_result  # noqa: E402

from xtfclip_lib.config import load_config  # noqa: E402
from xtfclip_lib.data import loader as data_loader  # noqa: E402
from xtfclip_lib.data.dataset import load_agvpreid, relabel, split_validation  # noqa: E402

logger = logging.getLogger("bench_data")


def time_epoch(loader, epoch: int) -> dict:
    """One pass over `loader` at `epoch`: seconds, tracklets/s and the cache's hit counts."""
    cache = loader.dataset.cache
    before = cache.stats()
    data_loader.set_loader_epoch(loader, epoch)
    start = time.perf_counter()
    num_batches = num_tracklets = 0
    for batch in loader:
        num_batches += 1
        num_tracklets += batch["clips"].shape[0]
    elapsed_s = time.perf_counter() - start
    after = cache.stats()
    if loader.num_workers > 0:  # the workers' caches are not visible from here
        after = before = {"hits": None, "misses": None, "mib": None}
    return {"epoch": epoch, "batches": num_batches, "tracklets": num_tracklets,
            "elapsed_s": round(elapsed_s, 3),
            "tracklets_per_s": round(num_tracklets / max(elapsed_s, 1e-9), 1),
            "cache_enabled": cache.enabled,
            "cache_hits": None if after["hits"] is None else after["hits"] - before["hits"],
            "cache_misses": None if after["misses"] is None else after["misses"] - before["misses"],
            "cache_mib": None if after["mib"] is None else round(after["mib"], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic-ag", help="AG-VPReID-layout dataset root")
    parser.add_argument("--preset", default="tiny", help="config preset giving size, T, P, K")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers (cache counts are reported only for 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.root)
    if not root.is_dir():
        logger.error("%s not found; generate it with 'python -m xtfclip_lib synth --root %s' "
                     "(or 'make data' for data/synthetic-ag), or pass --root", root, root)
        return 2
    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset, "x_tfclip", [("data.root", str(root)),
                                                ("data.num_workers", args.num_workers)])

    start = time.perf_counter()
    dataset = load_agvpreid(root)
    scan_s = time.perf_counter() - start
    counts = {name: len(tracklets) for name, tracklets in dataset.splits.items()}
    num_frames = sum(len(t.frames) for tracklets in dataset.splits.values() for t in tracklets)
    logger.info("scan: %.2f s for %d tracklets, %d frames", scan_s, sum(counts.values()), num_frames)

    train, _, _ = split_validation(dataset.train, cfg.data.num_val_ids, cfg.train.seed)
    label_of = relabel(train)
    size_hw = cfg.data.image_size_hw
    data_loader.shared_frame_cache(size_hw).clear()
    cached = data_loader.build_train_loader(cfg, train, label_of, seed=cfg.train.seed)
    epochs = {"cold_epoch0": time_epoch(cached, 0),
              "warm_epoch0": time_epoch(cached, 0),
              "warm_epoch1": time_epoch(cached, 1)}
    uncached_cfg = replace(cfg, data=replace(cfg.data, cache_frames=False))
    uncached = data_loader.build_train_loader(uncached_cfg, train, label_of, seed=cfg.train.seed)
    epochs["nocache_epoch1"] = time_epoch(uncached, 1)
    for name, result in epochs.items():
        logger.info("%-15s %6.2f s  %7.1f tracklets/s  (%s hits, %s misses)", name,
                    result["elapsed_s"], result["tracklets_per_s"], result["cache_hits"],
                    result["cache_misses"])

    payload = {
        "root": str(root), "preset": args.preset, "threads": args.threads,
        "image_size_hw": list(size_hw), "num_frames": cfg.data.num_frames,
        "batch": f"{cfg.data.num_ids_per_batch}x{cfg.data.num_tracklets_per_id}",
        "num_workers": cfg.data.num_workers,
        "scan_s": round(scan_s, 3), "tracklets": counts, "frames": num_frames,
        "scan_tracklets_per_s": round(sum(counts.values()) / max(scan_s, 1e-9), 1),
        "epochs": epochs,
        "warm_over_cold_speedup": round(epochs["cold_epoch0"]["elapsed_s"]
                                        / max(epochs["warm_epoch0"]["elapsed_s"], 1e-9), 2),
        "command": "python benchmarks/bench_data.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    path = write_result("data_loading", payload)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
