"""The set's plan: which pid goes to which split, seen by which cameras, with how many frames.

Train and test identities are disjoint; a test identity is rendered separately for each case, a
distractor only into one case's gallery. Every pid's cameras and lengths come from its own seeded
stream, so the plan of one pid does not depend on any other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xtfclip_lib.data.layout import AERIAL_CAMERAS, CASE_DIRS, GROUND_CAMERAS, TRAIN_DIR
from xtfclip_lib.data.synth.params import _TAG_PLAN, _TAG_SPLIT


@dataclass(frozen=True)
class _TrackletJob:
    folder: str          # relative folder of the pid, e.g. "train/0007"
    cam: int
    number: int          # the T number, unique per pid
    num_frames: int


@dataclass
class _Plan:
    train: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)
    distractors: dict[str, list[int]] = field(default_factory=dict)
    jobs: dict[int, list[_TrackletJob]] = field(default_factory=dict)


def _tracklet_length(rng: np.random.Generator, min_frames: int, max_frames: int) -> int:
    """Length with density ~ n^-1.5 on [min_frames, max_frames]: many short, a few long tracklets.

    For 8..64 the median is about 16 and the mean about 22 frames (inverse-CDF sampling).
    """
    lo, hi = min_frames ** -0.5, (max_frames + 1) ** -0.5
    return int(min(max_frames, math.floor((lo - rng.random() * (lo - hi)) ** -2)))


def _plan(num_ids: int, seed: int, test_fraction: float, distractors: int, train_tracklets: tuple[int, int],
          min_frames: int, max_frames: int) -> _Plan:
    """Which pid goes where, with which cameras and lengths; each pid from its own seeded stream."""
    order = np.random.default_rng(np.random.SeedSequence([seed, _TAG_SPLIT])).permutation(num_ids) + 1
    num_test = max(2, int(round(num_ids * test_fraction)))
    if num_ids - num_test < 2:
        raise ValueError(f"num_ids={num_ids} leaves {num_ids - num_test} training identities with "
                         f"test_fraction={test_fraction}; use more ids or a smaller test_fraction")
    # Small sets keep most test ids as queries: at most a sixth of them are distractors per case.
    distractors = min(distractors, num_test // 6)
    test = [int(p) for p in order[:num_test]]
    plan = _Plan(train=sorted(int(p) for p in order[num_test:]), test=sorted(test[2 * distractors:]),
                 distractors={"case1": sorted(test[:distractors]),
                              "case2": sorted(test[distractors:2 * distractors])})

    def ground(rng, n):
        return [int(c) for c in rng.choice(GROUND_CAMERAS, size=n, replace=n > len(GROUND_CAMERAS))]

    def aerial(rng, n):
        return [int(c) for c in rng.choice(AERIAL_CAMERAS, size=n, replace=n > len(AERIAL_CAMERAS))]

    for pid in range(1, num_ids + 1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, pid, _TAG_PLAN]))
        folders: list[tuple[str, list[int]]] = []
        if pid in plan.train:
            n = int(rng.integers(train_tracklets[0], train_tracklets[1] + 1))
            n_aerial = int(rng.integers(1, n))               # at least one of each platform
            cams = ground(rng, n - n_aerial) + aerial(rng, n_aerial)
            folders.append((TRAIN_DIR, cams))
        elif pid in plan.test:
            c1, c2 = CASE_DIRS["case1"], CASE_DIRS["case2"]
            folders += [(f"{c1}/query", aerial(rng, int(rng.integers(1, 3)))),
                        (f"{c1}/gallery", ground(rng, int(rng.integers(2, 4)))),
                        (f"{c2}/query", ground(rng, int(rng.integers(1, 3)))),
                        (f"{c2}/gallery", aerial(rng, int(rng.integers(2, 4))))]
        elif pid in plan.distractors["case1"]:
            folders.append((f"{CASE_DIRS['case1']}/gallery", ground(rng, int(rng.integers(2, 4)))))
        else:
            folders.append((f"{CASE_DIRS['case2']}/gallery", aerial(rng, int(rng.integers(2, 4)))))
        jobs, number = [], 0
        for folder, cams in folders:
            for cam in cams:
                number += 1
                jobs.append(_TrackletJob(f"{folder}/{pid:04d}", cam, number,
                                         _tracklet_length(rng, min_frames, max_frames)))
        plan.jobs[pid] = jobs
    return plan
