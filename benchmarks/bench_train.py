"""End-to-end training throughput: tracklets/s of `engine.train_one_epoch`, data loading included.

    python benchmarks/bench_train.py                          # tiny preset, 30 steps
    python benchmarks/bench_train.py --set model.pretrained=  # random init (no tiny CLIP file)
    python benchmarks/bench_train.py --set train.amp=bf16 --set train.grad_checkpointing=true

The speed switches of issue 15 (``train.amp``, ``train.grad_checkpointing``,
``train.optimizer_impl``, ``train.compile``) are ordinary overrides; the re-used C heap of
``bench_model.py`` is an environment setting of the process (``GLIBC_TUNABLES=`` its
``HEAP_TUNABLES`` before ``python``). ``bench_model.py`` compares them without data loading.

Runs the real training step (identity sampler, decoding and augmentation, forward, the combined
criterion, backward, gradient centralisation, Adam) for a fixed number of steps, twice: a cold
pass (frames decoded from JPEG) and a warm pass (frames from the in-memory cache, as in every
epoch after the first). The CLIP-Memory is a random matrix here: its values do not change the
cost of a step, and building it would time inference instead. Writes results/benchmarks/train.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import write_result  # noqa: E402
from xtfclip_lib.engine import loop as engine  # noqa: E402
from xtfclip_lib.config import load_config, to_dict  # noqa: E402
from xtfclip_lib.data.dataset import load_agvpreid, relabel, split_validation  # noqa: E402
from xtfclip_lib.data.loader import build_train_loader, set_loader_epoch  # noqa: E402
from xtfclip_lib.engine.distributed import DistEnv, resolve_device  # noqa: E402
from xtfclip_lib.engine.amp import autocast_dtype  # noqa: E402
from xtfclip_lib.losses import Criterion  # noqa: E402
from xtfclip_lib.model import build_model  # noqa: E402
from xtfclip_lib.engine.optim import EpochSchedule, build_optimizer  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="config preset (default: tiny)")
    parser.add_argument("--variant", default="x_tfclip", help="x_tfclip or tf_clip")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, repeatable")
    parser.add_argument("--steps", type=int, default=30, help="training steps per pass (default: 30)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--fp16", action="store_true",
                        help="CUDA: fp16 autocast with a gradient scaler instead of bf16 (the path "
                             "taken on GPUs without bf16)")
    parser.add_argument("--name", default="train", help="results/benchmarks/<name>.json")
    args = parser.parse_args(argv)

    cfg = load_config(args.preset, args.variant, [*args.overrides, f"train.steps_per_epoch={args.steps}"])
    if args.threads:
        torch.set_num_threads(args.threads)
    if cfg.model.pretrained and cfg.model.pretrained != "openai" and not Path(cfg.model.pretrained).is_file():
        raise SystemExit(f"model.pretrained={cfg.model.pretrained!r} not found: run "
                         "'python -m xtfclip_lib pretrain-clip' first, or pass --set model.pretrained= "
                         "to time a randomly initialised backbone")
    engine.seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    data = load_agvpreid(cfg.data.root)
    train_set, _, _ = split_validation(data.train, cfg.data.num_val_ids, cfg.train.seed)
    label_of = relabel(train_set)
    model = build_model(cfg, len(label_of)).to(device)
    model.set_memory(torch.nn.functional.normalize(torch.randn(len(label_of), model.memory.shape[1]), dim=1).to(device))
    criterion = Criterion(cfg.loss, cfg.features, len(label_of), cfg.data.num_frames).to(device)
    optimizer = build_optimizer(model, cfg.train)
    EpochSchedule(optimizer, cfg.train).set_epoch(0)
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    if args.fp16 and amp_dtype is not None:
        amp_dtype = torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loader = build_train_loader(cfg, train_set, label_of)

    passes = {}
    for name in ("cold", "warm"):
        set_loader_epoch(loader, 0)              # the same batches both times: only the cache differs
        start = time.perf_counter()
        stats = engine.train_one_epoch(model, criterion, loader, optimizer, scaler, cfg, DistEnv(device=device),
                                       amp_dtype, 0)
        elapsed = time.perf_counter() - start
        passes[name] = {"steps": stats["steps"], "tracklets": stats["steps"] * loader.batch_sampler.sampler.batch_size,
                        "elapsed_s": round(elapsed, 3), "tracklets_per_s": round(stats["tracklets_per_s"], 2),
                        "frames_per_s": round(stats["tracklets_per_s"] * cfg.data.num_frames, 1),
                        "loss": round(stats["loss"], 4)}
    payload = {"preset": args.preset, "variant": args.variant, "overrides": args.overrides,
               "device": str(device), "amp": str(amp_dtype), "threads": torch.get_num_threads(),
               "batch": f"P={cfg.data.num_ids_per_batch} x K={cfg.data.num_tracklets_per_id}, "
                        f"T={cfg.data.num_frames}, {cfg.data.image_size_hw[0]}x{cfg.data.image_size_hw[1]}",
               "num_workers": cfg.data.num_workers, "passes": passes,
               "config": {k: to_dict(cfg)[k] for k in ("data", "model", "features")}}
    path = write_result(args.name, payload)
    print(f"{path}: cold {passes['cold']['tracklets_per_s']} tracklets/s, "
          f"warm {passes['warm']['tracklets_per_s']} tracklets/s ({device}, {torch.get_num_threads()} threads)")
    return payload


if __name__ == "__main__":
    main()
