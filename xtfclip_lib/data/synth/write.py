"""The data set on disk: rendering every pid's tracklets to JPEG, the attribute CSVs, the manifest.

`generate_synthetic` checks the options, plans the set (`plan`), renders one pid per task (in a
spawned process pool or in this process: the bytes are the same), writes the CSVs with their
annotation noise and a manifest whose digest covers every file, all into a temporary sibling
folder that is renamed to the root at the end.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xtfclip_lib.data.attributes import ATTRIBUTES, CSV_COLUMNS, UNKNOWN_CODE
from xtfclip_lib.data.layout import ATTRIBUTE_DIR, ATTRIBUTE_FILES, MANIFEST, SPLIT_FOLDERS
from xtfclip_lib.data.synth.identities import Identity, sample_identity
from xtfclip_lib.data.synth.params import (_TAG_CSV, _TAG_MISSING, _TAG_TRACKLET, CAMERAS, GENERATOR_VERSION,
                                           SynthConfig, SynthParams)
from xtfclip_lib.data.synth.plan import _plan, _Plan
from xtfclip_lib.data.synth.render import render_tracklet
from xtfclip_lib.utils import tqdm  # console bars; none in a notebook kernel

logger = logging.getLogger(__name__)


def _render_identity(task: tuple) -> tuple[int, list[tuple[str, str, int]]]:
    """Worker: render and write every tracklet of one pid; returns (pid, [(relpath, sha256, bytes)])."""
    out_root, seed, pid, params_dict, jobs, quality = task
    params = SynthParams(**params_dict)
    idn = sample_identity(pid, seed, params)
    records = []
    for job in jobs:
        rng = np.random.default_rng(np.random.SeedSequence([seed, pid, _TAG_TRACKLET, job.number]))
        frames = render_tracklet(idn, job.cam, job.num_frames, rng, params)
        name = f"{pid:04d}_C{job.cam}_T{job.number:03d}"
        folder = Path(out_root) / job.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        for f, frame in enumerate(frames):
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, "JPEG", quality=quality)
            data = buffer.getvalue()
            rel = f"{job.folder}/{name}/{name}_F{f:04d}.jpg"
            (Path(out_root) / rel).write_bytes(data)
            records.append((rel, hashlib.sha256(data).hexdigest(), len(data)))
    return pid, records


HARD_TO_JUDGE = ("age", "ethnicity", "body_volume")


def _attribute_rows(pids: list[int], seed: int, split: str, params: SynthParams,
                    identities: dict[int, Identity]) -> list[list[int]]:
    """CSV rows of one split: true codes, some unknown, some wrong, a few pids left out."""
    split_code = {"train": 0, "case1": 1, "case2": 2}[split]
    num_missing = min(len(pids) - 1, max(1, int(round(params.missing_rate * len(pids)))))
    missing_rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_MISSING, split_code]))
    missing = set(int(p) for p in missing_rng.choice(pids, size=num_missing, replace=False))
    rows = []
    for pid in pids:
        if pid in missing:
            continue
        # One stream per pid (not per split): a person's annotation agrees across case CSVs.
        rng = np.random.default_rng(np.random.SeedSequence([seed, pid, _TAG_CSV]))
        row = [pid]
        for name in ATTRIBUTES:
            code = identities[pid].attributes[name]
            u, wrong = rng.random(), int(rng.integers(UNKNOWN_CODE[name]))
            unknown_rate = params.hard_unknown_rate if name in HARD_TO_JUDGE else params.unknown_rate
            if u < unknown_rate:
                code = UNKNOWN_CODE[name]
            elif u < unknown_rate + params.error_rate:
                code = wrong
            row.append(code)
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[list[int]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    path.write_bytes(data)
    return data


def _check_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"synthetic root {str(root)!r} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise ValueError(f"synthetic root {str(root)!r} is not empty; pass overwrite=True "
                         f"(CLI: --overwrite) to replace it, or choose an empty or new folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(root: Path) -> None:
    """Delete ``.ROOT.partial-PID`` siblings left by killed generations (their PID is gone)."""
    for stale in root.parent.glob(f".{root.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            logger.info("removing %s, left by an interrupted generation", stale)
            shutil.rmtree(stale, ignore_errors=True)


def generate_synthetic(root: str | os.PathLike, num_ids: int | None = None, seed: int | None = None, *,
                       config: SynthConfig | None = None, overwrite: bool = False,
                       difficulty: float | None = None, params: SynthParams | None = None,
                       min_frames: int | None = None, max_frames: int | None = None,
                       train_tracklets: tuple[int, int] | None = None, test_fraction: float | None = None,
                       distractors: int | None = None, jpeg_quality: int | None = None, workers: int = 2,
                       progress: bool = True) -> dict[str, Any]:
    """Write the synthetic aerial-ground video re-ID set under `root` in the AG-VPReID layout.

    Args:
        root: output folder; must be absent or empty unless `overwrite` (then it is replaced).
        config: the set's options (default `SynthConfig()`, the embedded default set); each of the
            keywords below that is given (not None) replaces the field of the same name:
        num_ids: identities in all (train + test + gallery-only distractors).
        seed: generator seed; the same seed and arguments give byte-identical files.
        difficulty: multiplies the nuisance fields of `params` (see `SynthParams.scaled`).
        params: nuisance sizes and annotation noise (default `SynthParams()`).
        min_frames, max_frames: tracklet length range; density ~ n^-1.5 (8..64: median 16, mean 22).
        train_tracklets: (min, max) tracklets per training identity, at least one ground and one aerial.
        test_fraction: share of identities held out for test; train and test pids are disjoint.
        distractors: gallery-only identities added to each case's gallery (at most a sixth of
            the test identities each).
        jpeg_quality: fixed JPEG quality of every frame.
        workers: spawned render processes, one pid per task; the output does not depend on it
            (1 renders in this process).
        progress: show a tqdm bar.

    Test identities appear in both cases with separately rendered tracklets: case 1 has 1-2 aerial
    (C4/C5) query and 2-3 ground (C0-C3) gallery tracklets per pid, case 2 1-2 ground queries and
    2-3 aerial gallery tracklets. Writes into a temporary sibling folder renamed at the end, so a
    failed run leaves `root` untouched. Returns the summary also stored in ROOT/manifest.json
    (plus `root` and `elapsed_s`).
    """
    start = time.perf_counter()
    root = Path(root)
    options = {"num_ids": num_ids, "seed": seed, "difficulty": difficulty, "params": params,
               "min_frames": min_frames, "max_frames": max_frames, "train_tracklets": train_tracklets,
               "test_fraction": test_fraction, "distractors": distractors, "jpeg_quality": jpeg_quality}
    config = replace(config or SynthConfig(), **{k: v for k, v in options.items() if v is not None})
    config.validate()
    params = config.params.scaled(config.difficulty)
    params.validate()
    _check_root(root, overwrite)
    plan = _plan(config.num_ids, config.seed, config.test_fraction, config.distractors,
                 tuple(config.train_tracklets), config.min_frames, config.max_frames)

    _remove_stale_partials(root)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        params_dict = asdict(params)
        records = _render_all(tmp, config.seed, plan, params_dict, config.jpeg_quality, workers, progress)
        records += _write_attributes(tmp, config.seed, plan, params)
        records.sort()
        manifest = _manifest(config, params_dict, plan, records)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if root.exists():
            _check_root(root, overwrite)     # it may have been filled while we rendered
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - start
    total_frames = sum(c["frames"] for c in manifest["counts"].values())
    logger.info("wrote %d identities, %d frames to %s in %.1f s (digest %s)", config.num_ids, total_frames, root,
                elapsed, manifest["digest"][:19])
    return {**manifest, "root": str(root), "elapsed_s": elapsed}


def _render_all(tmp: Path, seed: int, plan: _Plan, params_dict: dict, jpeg_quality: int, workers: int,
                progress: bool) -> list[tuple[str, str, int]]:
    """Render every pid of `plan` under `tmp`, one task per pid; returns the frames' records."""
    tasks = [(str(tmp), seed, pid, params_dict, plan.jobs[pid], jpeg_quality) for pid in sorted(plan.jobs)]
    # Longest identities first keeps both workers busy to the end.
    tasks.sort(key=lambda task: -sum(job.num_frames for job in task[4]))
    records: list[tuple[str, str, int]] = []
    bar = tqdm(total=len(tasks), unit="id", desc="synth", disable=not progress)
    if workers <= 1:
        for task in tasks:
            records += _render_identity(task)[1]
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for _, recs in pool.map(_render_identity, tasks, chunksize=1):
                records += recs
                bar.update()
    bar.close()
    return records


def _write_attributes(tmp: Path, seed: int, plan: _Plan, params: SynthParams) -> list[tuple[str, str, int]]:
    """The three attribute CSVs (train, case 1, case 2: test ids plus that case's distractors)."""
    identities = {pid: sample_identity(pid, seed, params) for pid in plan.jobs}
    (tmp / ATTRIBUTE_DIR).mkdir()
    split_pids = {"train": plan.train,
                  "case1": sorted(plan.test + plan.distractors["case1"]),
                  "case2": sorted(plan.test + plan.distractors["case2"])}
    records = []
    for split, pids in split_pids.items():
        rel = f"{ATTRIBUTE_DIR}/{ATTRIBUTE_FILES[split]}"
        data = _write_csv(tmp / rel, _attribute_rows(pids, seed, split, params, identities))
        records.append((rel, hashlib.sha256(data).hexdigest(), len(data)))
    return records


def _manifest(config: SynthConfig, params_dict: dict, plan: _Plan, records: list[tuple[str, str, int]]
              ) -> dict[str, Any]:
    """The summary written as ROOT/manifest.json; its digest hashes the sorted (path, sha256) records."""
    digest = hashlib.sha256()
    for rel, sha, _ in records:
        digest.update(f"{rel}\0{sha}\n".encode())
    counts: dict[str, Any] = {}
    for folder in SPLIT_FOLDERS:
        jobs = [(pid, job) for pid, js in plan.jobs.items() for job in js if job.folder.startswith(folder + "/")]
        counts[folder] = {"ids": len({pid for pid, _ in jobs}), "tracklets": len(jobs),
                          "frames": sum(job.num_frames for _, job in jobs)}
    cams = {f"C{c}": sum(1 for js in plan.jobs.values() for job in js if job.cam == c) for c in CAMERAS}
    return {
        "generator": "xtfclip_lib.data.synth", "version": GENERATOR_VERSION,
        "args": {"num_ids": config.num_ids, "seed": config.seed, "difficulty": config.difficulty,
                 "min_frames": config.min_frames, "max_frames": config.max_frames,
                 "train_tracklets": list(config.train_tracklets), "test_fraction": config.test_fraction,
                 "distractors": config.distractors, "jpeg_quality": config.jpeg_quality},
        "params": params_dict,
        "splits": {"train": plan.train, "test": plan.test, "distractors": plan.distractors},
        "counts": counts, "tracklets_per_camera": cams,
        "files": len(records), "bytes": sum(r[2] for r in records),
        "digest": "sha256:" + digest.hexdigest(),
    }
