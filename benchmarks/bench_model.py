"""Training-step throughput, peak memory and a per-module profile of the X-TFCLIP network.

One step is the engine's (`engine.train_one_epoch` without the data loader): forward in train mode
under ``train.amp``'s autocast, the combined criterion in fp32, backward, gradient centralisation
and Adam over the engine's parameter groups, on random clips with a randomly initialised backbone
(weights do not change the cost). Every configuration runs in its own subprocess, so that its
peak resident set size (``ru_maxrss``: interpreter and libraries included, about 1 GiB, also
recorded) is its own. GPU peak memory is ``torch.cuda.max_memory_allocated``. Throughput is
frames per second (tracklets x T per step); every configuration starts from the same seed and
the same clips, so its losses show whether it computes what fp32 computes.

    python benchmarks/bench_model.py --quick        # seconds: tiny network, every CPU configuration
    python benchmarks/bench_model.py --cpu-paper    # issue 15's CPU figures: paper network,
                                                    # P x K x T = 2 x 2 x 8, 288x144, 625 ids (~20 min)
    python benchmarks/bench_model.py                # tiny on CPU in fp32; paper on CUDA in bf16
    python benchmarks/bench_model.py --preset paper --batch 2x2x8 --num-classes 625 \\
        --amp bf16 --grad-checkpointing --profile  # one configuration, with a profile

The CPU configurations cross ``train.amp`` (off, bf16 where the CPU has it natively),
``train.grad_checkpointing`` and the C heap: "heap" runs the subprocess with glibc's malloc kept
from returning freed memory to the system (``GLIBC_TUNABLES``, `HEAP_TUNABLES`), so that the
step's large temporaries re-use pages instead of faulting in fresh zeroed ones every time. That
changes no number (the losses stay bitwise equal); launch training the same way to get it.
``--profile`` adds the forward time of each top-level module, the backward, gradient
centralisation and optimiser times, and the ops that take the most time (torch.profiler).
Writes ``results/benchmarks/model.json`` (``model_quick.json``, ``model_cpu_paper.json``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result  # noqa: E402

from xtfclip_lib.engine import loop as engine  # noqa: E402
from xtfclip_lib.config import load_config  # noqa: E402
from xtfclip_lib.engine.amp import autocast, autocast_dtype, cpu_has_native_bf16  # noqa: E402
from xtfclip_lib.losses import Criterion  # noqa: E402
from xtfclip_lib.model import build_model  # noqa: E402
from xtfclip_lib.engine.optim import build_optimizer, centralize_gradients  # noqa: E402

logger = logging.getLogger(__name__)

# glibc malloc: never mmap (every block comes from the heap) and never trim the heap, so freed
# blocks are re-used by the next step instead of being unmapped and faulted in again.
HEAP_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
# issue 15's CPU measurement: the paper network at P x K x T = 2 x 2 x 8 with 625 identities
CPU_PAPER = {"preset": "paper", "batch": "2x2x8", "num_classes": 625}
TARGET_FRAMES_PER_S, TARGET_RSS_RATIO, TARGET_RSS_GIB = 1.7, 0.6, 5.2


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_config(setting: dict):
    """The resolved config of one configuration (random init, its batch and speed switches)."""
    overrides = ["model.pretrained=", f"train.amp={setting['amp']}",
                 f"train.grad_checkpointing={str(setting['grad_checkpointing']).lower()}",
                 f"train.optimizer_impl={setting['optimizer_impl']}",
                 f"train.compile={str(setting['compile']).lower()}"]
    if setting.get("batch"):
        P, K, T = (int(v) for v in setting["batch"].lower().split("x"))
        overrides += [f"data.num_ids_per_batch={P}", f"data.num_tracklets_per_id={K}", f"data.num_frames={T}"]
    return load_config(setting["preset"], "x_tfclip", overrides)


class ModuleTimer:
    """Forward wall time of each named module (hooks; CUDA synchronised), summed over calls."""

    def __init__(self, model: torch.nn.Module, names: list[str], cuda: bool):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda, self.handles, self.started = cuda, [], {}
        modules = dict(model.named_modules())
        for name in names:
            self.handles.append(modules[name].register_forward_pre_hook(self._start(name)))
            self.handles.append(modules[name].register_forward_hook(self._stop(name)))

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _start(self, name):
        def hook(module, args):
            self.started[name] = self._now()
        return hook

    def _stop(self, name):
        def hook(module, args, output):
            self.seconds[name] += self._now() - self.started.pop(name)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def measure(setting: dict) -> dict:
    """Time ``setting['steps']`` training steps after one warm-up step; figures of one configuration."""
    rss_before_mib = _peak_rss_mib()
    if setting.get("threads"):
        torch.set_num_threads(setting["threads"])
    cfg = build_config(setting)
    device = torch.device(setting["device"])
    cuda = device.type == "cuda"
    num_classes = setting["num_classes"]
    B = cfg.data.num_ids_per_batch * cfg.data.num_tracklets_per_id
    T, (H, W) = cfg.data.num_frames, cfg.data.image_size_hw
    torch.manual_seed(0)
    model = build_model(cfg, num_classes).to(device)
    model.set_memory(torch.nn.functional.normalize(torch.randn(num_classes, model.backbone.embed_dim), dim=1).to(device))
    model.train()
    criterion = Criterion(cfg.loss, cfg.features, num_classes, T).to(device)
    optimizer = build_optimizer(model, cfg.train)
    train_model = engine.compile_model(model) if cfg.train.compile else model
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(1)
    clips = torch.randn(B, T, 3, H, W, generator=gen).to(device)
    camids = torch.randint(0, 6, (B,), generator=gen).to(device)
    labels = (torch.arange(B) // cfg.data.num_tracklets_per_id).to(device)
    phases: dict[str, float] = defaultdict(float)
    time_phases = not cuda or setting.get("profile")       # on a GPU only when profiling: it syncs

    def mark(name: str, since: float) -> float:
        if not time_phases:
            return since
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        phases[name] += now - since
        return now

    def step() -> float:
        t = time.perf_counter()
        with autocast(device, amp_dtype):
            out = train_model(clips, camids)
        loss, _ = criterion({k: v.float() for k, v in out.items()}, labels)
        t = mark("forward + criterion", t)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        t = mark("backward", t)
        if cfg.features.grad_centralization:
            centralize_gradients(model.parameters())
        t = mark("grad centralisation", t)
        scaler.step(optimizer)
        scaler.update()
        mark("optimizer step", t)
        return float(loss.detach())

    losses = [step()]                                        # warm-up (allocations, kernels, compile)
    phases.clear()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(setting["steps"]):
        losses.append(step())
    if cuda:
        torch.cuda.synchronize()
    elapsed_s = time.perf_counter() - start
    result = {**setting, "arch": cfg.model.arch, "image_size_hw": list(cfg.data.image_size_hw),
              "tracklets_per_step": B, "num_frames": T, "autocast": str(amp_dtype),
              "losses": losses, "step_s": elapsed_s / setting["steps"],
              "frames_per_s": B * T * setting["steps"] / elapsed_s,
              "phases_s_per_step": {k: v / setting["steps"] for k, v in phases.items()},
              "parameters": sum(p.numel() for p in model.parameters()),
              "torch_threads": torch.get_num_threads(), "cpu_native_bf16": cpu_has_native_bf16(),
              "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    if setting.get("profile"):
        result["profile"] = profile_step(model, step, cuda)
    if cuda:
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_device"] = torch.cuda.get_device_name(0)
    result["peak_rss_mib"] = _peak_rss_mib()
    result["peak_rss_before_model_mib"] = rss_before_mib     # interpreter + torch + open_clip
    return result


def profile_step(model, step, cuda: bool, top: int = 15) -> dict:
    """One more step: forward seconds per top-level module and the ops with the most self time."""
    names = [n for n, _ in model.named_children()]
    blocks = [f"backbone.visual.transformer.resblocks.{i}"
              for i in range(len(model.backbone.visual.transformer.resblocks))]
    timer = ModuleTimer(model, names + ["backbone.visual.transformer"] + blocks[:1], cuda)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        step()
    timer.remove()
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort_by), reverse=True)[:top]
    return {"forward_s_by_module": {k: round(v, 4) for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1])},
            f"top_ops_by_{sort_by}": [{"op": e.key, "calls": e.count,
                                       "self_s": round(getattr(e, sort_by) / 1e6, 4)} for e in events]}


def run_isolated(setting: dict, heap: bool) -> dict:
    """`measure(setting)` in a fresh interpreter (its own peak RSS); `heap` sets `HEAP_TUNABLES`."""
    env = dict(os.environ)
    if heap:
        env["GLIBC_TUNABLES"] = HEAP_TUNABLES
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(setting)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"configuration {setting['name']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_grid(base: dict) -> list[tuple[dict, bool]]:
    """The CPU configurations: fp32 and (where native) bf16, each plain, with checkpointing, on
    the re-used heap, and both; then the fastest inexact extra (fused Adam)."""
    amps = ["off"] + (["bf16"] if cpu_has_native_bf16() else [])
    grid = []
    for amp in amps:
        for heap in (False, True):
            for ckpt in (False, True):
                name = "_".join([{"off": "fp32", "bf16": "bf16"}[amp]] + ["heap"] * heap + ["ckpt"] * ckpt)
                grid.append(({**base, "name": name, "amp": amp, "grad_checkpointing": ckpt}, heap))
    grid.append(({**base, "name": f"{amps[-1].replace('off', 'fp32')}_heap_fused", "amp": amps[-1],
                  "optimizer_impl": "fused"}, True))
    return grid


def summarise(results: dict, targets: bool) -> dict:
    """Which configurations are exact (every step's loss equal to plain fp32's), the fastest exact one,
    and peak RSS with checkpointing against without (same amp and heap); with `targets`, whether
    issue 15's targets are met (they are for the `--cpu-paper` size only)."""
    reference = results.get("fp32", {}).get("losses")
    exact = {n: r["frames_per_s"] for n, r in results.items() if r["losses"] == reference}
    summary = {"exact_configurations": sorted(exact), "rss_ratio_ckpt": {}}
    if exact:
        best = max(exact, key=exact.get)
        summary |= {"fastest_exact": best, "fastest_exact_frames_per_s": round(exact[best], 3)}
        if targets:
            summary |= {"target_frames_per_s": TARGET_FRAMES_PER_S,
                        "meets_frames_target": exact[best] >= TARGET_FRAMES_PER_S}
    fastest = max(results, key=lambda n: results[n]["frames_per_s"])
    summary |= {"fastest": fastest, "fastest_frames_per_s": round(results[fastest]["frames_per_s"], 3)}
    for name, r in results.items():
        if name.endswith("_ckpt") and name[:-5] in results:
            ratio = r["peak_rss_mib"] / results[name[:-5]]["peak_rss_mib"]
            summary["rss_ratio_ckpt"][name] = {
                "ratio": round(ratio, 3), "peak_rss_gib": round(r["peak_rss_mib"] / 1024, 2),
                "without_gib": round(results[name[:-5]]["peak_rss_mib"] / 1024, 2)}
            if targets:
                summary["rss_ratio_ckpt"][name]["meets_target"] = \
                    ratio <= TARGET_RSS_RATIO and r["peak_rss_mib"] / 1024 <= TARGET_RSS_GIB
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny network, 2 steps, every CPU configuration")
    parser.add_argument("--cpu-paper", action="store_true",
                        help="every CPU configuration at issue 15's size (paper network, 2x2x8, 625 ids)")
    parser.add_argument("--preset", help="one configuration of this preset (with the flags below)")
    parser.add_argument("--batch", help="P x K x T, e.g. 2x2x8 (default: the preset's)")
    parser.add_argument("--num-classes", type=int, default=0, help="training identities (default 160 tiny, 625 paper)")
    parser.add_argument("--amp", default="off", help="train.amp: auto, bf16 or off (default: off)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="train.grad_checkpointing=true")
    parser.add_argument("--optimizer-impl", default="auto", help="train.optimizer_impl: auto, foreach, fused")
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--heap", action="store_true", help="re-use freed heap memory (HEAP_TUNABLES)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one configuration)")
    parser.add_argument("--profile", action="store_true", help="add a per-module and per-op profile")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-gpu", action="store_true", help="default run: measure the CPU setting only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:                                   # one configuration, inside run_isolated
        print(json.dumps(measure(json.loads(args.child))))
        return {}
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    base = {"device": "cpu", "amp": "off", "grad_checkpointing": False, "optimizer_impl": "auto",
            "compile": False, "threads": args.threads, "profile": args.profile, "batch": args.batch}
    if args.quick:
        name, grid = "model_quick", cpu_grid({**base, "preset": "tiny", "num_classes": 160,
                                              "steps": args.steps or 2, "batch": args.batch or "2x2x4"})
    elif args.cpu_paper:
        name, grid = "model_cpu_paper", cpu_grid({**base, **CPU_PAPER, "steps": args.steps or 3})
    elif args.preset:
        setting = {**base, "preset": args.preset, "device": args.device, "amp": args.amp,
                   "grad_checkpointing": args.grad_checkpointing, "optimizer_impl": args.optimizer_impl,
                   "compile": args.compile, "steps": args.steps or 3,
                   "num_classes": args.num_classes or (625 if args.preset == "paper" else 160)}
        setting["name"] = "_".join([args.preset, args.device, args.amp] + ["heap"] * args.heap
                                   + ["ckpt"] * args.grad_checkpointing + ["fused"] * (args.optimizer_impl == "fused")
                                   + ["compiled"] * args.compile)
        name, grid = f"model_{setting['name']}", [(setting, args.heap)]
    else:
        name = "model"
        grid = [({**base, "name": "cpu_tiny", "preset": "tiny", "num_classes": 160, "steps": args.steps or 5}, False)]
        if torch.cuda.is_available() and not args.skip_gpu:
            grid.append(({**base, "name": "cuda_paper", "preset": "paper", "device": "cuda", "amp": "auto",
                          "num_classes": 689, "steps": args.steps or 5}, False))
    if args.quick or args.cpu_paper:                 # where the plain and the fastest step spend time
        for setting, _ in grid:
            setting["profile"] = args.profile or setting["name"] in ("fp32", "bf16_heap")
    results = {}
    for setting, heap in grid:
        started = time.perf_counter()
        r = results[setting["name"]] = run_isolated({**setting, "heap": heap}, heap)
        memory = r.get("peak_memory_mib", r["peak_rss_mib"])
        logger.info("%-18s %7.2f frames/s  %7.3f s/step  peak %6.0f MiB  last loss %.6f  (%.0f s)",
                    setting["name"], r["frames_per_s"], r["step_s"], memory, r["losses"][-1],
                    time.perf_counter() - started)
    payload = {"results": results}
    if args.quick or args.cpu_paper:
        payload["summary"] = summarise(results, targets=args.cpu_paper)
        logger.info("%s", json.dumps(payload["summary"], indent=1))
    path = write_result(name, payload)
    logger.info("wrote %s", path)
    return payload


if __name__ == "__main__":
    main()
