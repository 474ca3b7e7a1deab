"""Training-step throughput and peak memory of the X-TFCLIP network.

One step = forward (train mode) + combined loss + backward + AdamW step, on random clips with a
random-initialised backbone (weights do not change the cost). Measured:

- ``tiny`` preset on CPU (the embedded default), fp32;
- ``paper`` preset (ViT-B-16, 288x144, 3x6 tracklets x 8 frames) on CUDA in bf16 autocast, when
  a GPU is present.

Throughput is frames per second (tracklets x T per step). CPU peak memory is the process's peak
resident set size (it includes the interpreter and libraries, about 1 GiB before the model is
built, also recorded); GPU peak memory is
``torch.cuda.max_memory_allocated``. Writes ``results/benchmarks/model.json``.

    python benchmarks/bench_model.py [--steps 5] [--threads 1] [--skip-gpu]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from xtfclip_lib.config import load_config  # noqa: E402
from xtfclip_lib.losses import Criterion  # noqa: E402
from xtfclip_lib.model import build_model  # noqa: E402

logger = logging.getLogger(__name__)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(preset: str, device: str, num_classes: int, steps: int, bf16: bool) -> dict:
    """Time `steps` training steps after one warm-up step; return figures for one setting."""
    rss_before_mib = _peak_rss_mib()
    cfg = load_config(preset, "x_tfclip", ["model.pretrained="])
    B = cfg.data.num_ids_per_batch * cfg.data.num_tracklets_per_id
    T, (H, W) = cfg.data.num_frames, cfg.data.image_size_hw
    torch.manual_seed(0)
    model = build_model(cfg, num_classes).to(device)
    model.set_memory(torch.randn(num_classes, model.backbone.embed_dim, device=device))
    model.train()
    criterion = Criterion(cfg.loss, cfg.features, num_classes, T).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    clips = torch.randn(B, T, 3, H, W, device=device)
    camids = torch.randint(0, 6, (B,), device=device)
    labels = torch.arange(B, device=device) // cfg.data.num_tracklets_per_id
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            total, _ = criterion(model(clips, camids), labels)
        total.backward()
        optimizer.step()
        return total.item()

    step()                                                   # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed_s = time.perf_counter() - start
    result = {"preset": preset, "device": device, "dtype": "bf16-autocast" if bf16 else "fp32",
              "arch": cfg.model.arch, "image_size_hw": list(cfg.data.image_size_hw),
              "tracklets_per_step": B, "num_frames": T, "num_classes": num_classes, "steps": steps,
              "step_s": elapsed_s / steps, "frames_per_s": B * T * steps / elapsed_s,
              "parameters": sum(p.numel() for p in model.parameters())}
    if device == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_device"] = torch.cuda.get_device_name(0)
    else:
        result["peak_rss_mib"] = _peak_rss_mib()
        result["peak_rss_before_model_mib"] = rss_before_mib   # interpreter + torch + open_clip
        result["torch_threads"] = torch.get_num_threads()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-gpu", action="store_true", help="measure the CPU setting only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"cpu_tiny": measure("tiny", "cpu", num_classes=160, steps=args.steps, bf16=False)}
    if torch.cuda.is_available() and not args.skip_gpu:
        results["cuda_paper"] = measure("paper", "cuda", num_classes=689, steps=args.steps, bf16=True)
    path = write_result("model", {"results": results})
    for name, r in results.items():
        memory = r.get("peak_memory_mib", r.get("peak_rss_mib"))
        logger.info("%s: %.1f frames/s, %.3f s/step, peak memory %.0f MiB", name,
                    r["frames_per_s"], r["step_s"], memory)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
