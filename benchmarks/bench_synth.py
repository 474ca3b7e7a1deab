"""Time the default synthetic set (`SynthConfig()`) as `make data` writes it.

Its size and seed are the run config's ``data.synth_ids`` and ``data.synth_seed``. Usage:
``python benchmarks/bench_synth.py [--ids N] [--workers 2] [--repeats 1]``. Writes
results/benchmarks/synth.json with the wall and CPU seconds per run, frames per second, the
output size and the digest (which must not change between repeats). The issue's budget is 60 s
for the default size on 2 cores; the machine's load is recorded beside the figures because a
shared machine slows every run.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import write_result  # noqa: E402

from xtfclip_lib.data import SynthConfig, generate_synthetic  # noqa: E402

logger = logging.getLogger("bench_synth")


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the render workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=SynthConfig.num_ids, help="identities (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SynthConfig.seed, help="generator seed (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="render processes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="timed generations (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    runs = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        for repeat in range(args.repeats):
            load_before = os.getloadavg()[0]
            cpu0, wall0 = _cpu_seconds(), time.perf_counter()
            summary = generate_synthetic(scratch / f"run{repeat}", args.ids, args.seed, workers=args.workers,
                                         progress=False)
            wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
            frames = sum(c["frames"] for c in summary["counts"].values())
            runs.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "frames": frames,
                         "frames_per_s": round(frames / wall, 1), "bytes": summary["bytes"],
                         "digest": summary["digest"], "load_avg_1min_before": load_before})
            logger.info("run %d: %.1f s wall, %.1f s CPU, %d frames, %.1f MB", repeat, wall, cpu, frames,
                        summary["bytes"] / 1e6)
            shutil.rmtree(scratch / f"run{repeat}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    payload = {"command": f"generate_synthetic(root, {args.ids}, {args.seed}, workers={args.workers})",
               "budget_s": 60.0, "runs": runs,
               "best_wall_s": min(r["wall_s"] for r in runs),
               "deterministic": len({r["digest"] for r in runs}) == 1}
    logger.info("wrote %s", write_result("synth", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
