"""Speed and peak memory of `evaluation.evaluate` against a plain per-query numpy loop.

Both compute the Market-1501 / MARS protocol (METHOD §5) on the same seeded random distance
matrix (default 2,000 queries x 10,000 gallery items, 500 identities, 6 cameras). The run checks
that both give the same per-query ranks and metrics, times them alternately (best of
``--repeats``), measures each one's peak of traced allocations (tracemalloc, numpy buffers
included) in a separate untimed call, and times one stable argsort of the whole matrix for
context (the floor of any full-sort evaluator). Target (issue 3): evaluate at least 10x faster.
Writes ``results/benchmarks/evaluation.json``.

    python benchmarks/bench_evaluation.py [--queries 2000] [--gallery 10000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from xtfclip_lib.evaluation import evaluate  # noqa: E402

logger = logging.getLogger(__name__)


def loop_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50) -> dict:
    """The protocol one query at a time: drop same-pid same-camera items, stable-sort the rest."""
    first_rank = np.zeros(len(q_pids), dtype=np.int64)
    ap = np.full(len(q_pids), np.nan)
    inp = np.full(len(q_pids), np.nan)
    for i in range(len(q_pids)):
        keep = ~((g_pids == q_pids[i]) & (g_camids == q_camids[i]))
        order = np.argsort(distmat[i][keep], kind="stable")
        ranks = np.flatnonzero(g_pids[keep][order] == q_pids[i]) + 1   # 1-based, kept items
        if len(ranks) == 0:
            continue
        first_rank[i] = ranks[0]
        ap[i] = np.mean(np.arange(1, len(ranks) + 1) / ranks)
        inp[i] = len(ranks) / ranks[-1]
    valid = first_rank > 0
    cmc = (first_rank[valid][:, None] <= np.arange(1, max_rank + 1)).mean(axis=0)
    return {"cmc": cmc, "mAP": float(ap[valid].mean()), "mINP": float(inp[valid].mean()),
            "num_valid_queries": int(valid.sum()), "valid": valid, "first_rank": first_rank,
            "ap": ap, "inp": inp}


def _timed(fn, *args) -> tuple[float, dict]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def _traced_peak_mib(fn, *args) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000, help="number of queries (rows)")
    parser.add_argument("--gallery", type=int, default=10000, help="number of gallery items")
    parser.add_argument("--ids", type=int, default=500, help="number of identities")
    parser.add_argument("--cameras", type=int, default=6, help="number of cameras")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--name", default="evaluation", help="results/benchmarks/<name>.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    distmat = rng.random((args.queries, args.gallery), dtype=np.float32)
    ids = (rng.integers(0, args.ids, args.queries), rng.integers(0, args.ids, args.gallery),
           rng.integers(0, args.cameras, args.queries), rng.integers(0, args.cameras, args.gallery))
    rss_start_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    evaluate(distmat[:50], ids[0][:50], ids[1], ids[2][:50], ids[3])   # warm-up
    fast_s, loop_s = [], []
    for _ in range(args.repeats):     # alternate, so that load on the machine hits both alike
        t, loop = _timed(loop_evaluate, distmat, *ids)
        loop_s.append(t)
        t, fast = _timed(evaluate, distmat, *ids, 50, True)
        fast_s.append(t)

    same_ranks = bool(np.array_equal(fast["first_rank"], loop["first_rank"])
                      and np.array_equal(fast["valid"], loop["valid"]))
    v = fast["valid"]
    max_ap_diff = float(np.abs(fast["ap"][v] - loop["ap"][v]).max())
    max_inp_diff = float(np.abs(fast["inp"][v] - loop["inp"][v]).max())
    max_cmc_diff = float(np.abs(fast["cmc"] - loop["cmc"]).max())
    identical = same_ranks and max(max_ap_diff, max_inp_diff, max_cmc_diff) <= 1e-12

    fast_peak = _traced_peak_mib(evaluate, distmat, *ids)
    loop_peak = _traced_peak_mib(loop_evaluate, distmat, *ids)
    argsort_s, _ = _timed(np.argsort, distmat, 1, "stable")
    payload = {
        "shape": [args.queries, args.gallery], "num_ids": args.ids, "num_cameras": args.cameras,
        "seed": args.seed, "repeats": args.repeats, "torch_threads": args.threads,
        "num_valid_queries": fast["num_valid_queries"],
        "mean_true_matches_per_query": float(fast["num_matches"][v].mean()),
        "evaluate_s": min(fast_s), "loop_s": min(loop_s), "speedup": min(loop_s) / min(fast_s),
        "evaluate_s_all": fast_s, "loop_s_all": loop_s,
        "full_stable_argsort_s": argsort_s,
        "evaluate_peak_traced_mib": fast_peak, "loop_peak_traced_mib": loop_peak,
        "distmat_mib": distmat.nbytes / 2**20,
        "process_peak_rss_start_mib": rss_start_mib,
        "process_peak_rss_end_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "identical": identical, "same_ranks": same_ranks, "max_ap_diff": max_ap_diff,
        "max_inp_diff": max_inp_diff, "max_cmc_diff": max_cmc_diff,
        "mAP": fast["mAP"], "mINP": fast["mINP"], "rank1": float(fast["cmc"][0]),
        "target_speedup": 10.0, "meets_target": identical and min(loop_s) / min(fast_s) >= 10.0,
    }
    path = write_result(args.name, payload)
    logger.info("evaluate %.3f s, loop %.3f s: %.1fx faster (target 10x); identical: %s; "
                "peak traced memory %.1f MiB vs %.1f MiB (distmat %.1f MiB); full stable argsort "
                "%.3f s -> %s", payload["evaluate_s"], payload["loop_s"], payload["speedup"],
                identical, fast_peak, loop_peak, payload["distmat_mib"], argsort_s, path)
    if not identical:
        logger.error("evaluate and the loop disagree: same ranks %s, max AP diff %.3g, max INP "
                     "diff %.3g, max CMC diff %.3g", same_ranks, max_ap_diff, max_inp_diff,
                     max_cmc_diff)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
