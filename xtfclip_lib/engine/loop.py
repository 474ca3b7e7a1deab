"""Training: CLIP-Memory, the epoch loop, validation, safe checkpoints and the final test.

    python -m xtfclip_lib train --preset tiny --variant x_tfclip --seed 0 --out results/runs/x_tfclip
    torchrun --nproc_per_node 2 -m xtfclip_lib train --preset quick --out results/runs/ddp

`train` reads top-down: setup, data, model and CLIP-Memory, criterion, optimiser and schedule,
resume, the score of the untrained model, the epoch loop (LR, one epoch, online-label-smoothing
step, validation, metrics, checkpoints), then the test set scored once on the selected checkpoint.

The best epoch is chosen on held-out *training* identities (METHOD §7); ``train.select_on:
test`` selects on the test set instead, and every output then says so. Run folder::

    config.yaml   train.log   metrics.jsonl + metrics.csv (one row per epoch)
    last.pt (every epoch)     best.pt (the selected epoch)     features/ (test features)
    test_metrics.csv, test_metrics_before.csv (untrained model), summary.json (run finished)
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from xtfclip_lib.config import Config, config_digest, from_dict, save_config, to_dict
from xtfclip_lib.data import build_train_loader, load_agvpreid, relabel, set_loader_epoch, split_validation
from xtfclip_lib.engine import checkpoint as ckpt
from xtfclip_lib.engine.distributed import (DistEnv, all_reduce_sum, barrier, broadcast_object, cleanup_distributed,
                          setup_distributed)
from xtfclip_lib.engine.amp import autocast, autocast_dtype
from xtfclip_lib.engine.cache import FEATURES_DIR, UNTRAINED, data_manifest_digest, features_key, save_features, untrained_key
from xtfclip_lib.engine.inference import build_clip_memory, encode_lists
from xtfclip_lib.engine.protocol import score_cases, test_protocol, validation_protocol
from xtfclip_lib.evaluation import METRIC_NAMES
from xtfclip_lib.losses import Criterion
from xtfclip_lib.model import build_model, check_camera_ids
from xtfclip_lib.engine.optim import EpochSchedule, build_optimizer, centralize_gradients
from xtfclip_lib.utils import tqdm  # console bars; none in a notebook kernel

logger = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "train.log", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt",
             "test_metrics.csv", "test_metrics_before.csv", "summary.json", FEATURES_DIR)
# Config keys that may change when a run is resumed (they do not change what is trained).
RESUMABLE_CHANGES = ("train.epochs", "train.device", "train.num_threads", "train.log_every_steps",
                     "train.grad_checkpointing", "data.num_workers")


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train `cfg` into the run folder `out_dir` and return the summary (also summary.json).

    `resume` continues from ``out_dir/last.pt`` (reproducing the uninterrupted run on CPU);
    `overwrite` replaces a run folder that holds a run. Under torchrun every rank calls this.
    """
    env = setup_distributed(cfg.train.device)
    out = Path(out_dir)
    log_file, threads = None, torch.get_num_threads()
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    try:
        log_file = _open_run_folder(out, cfg, resume=resume, overwrite=overwrite, main=env.is_main)
        return _train(cfg, out, env, resume)
    finally:
        if log_file is not None:
            handler, previous_level = log_file
            logging.getLogger("xtfclip_lib").removeHandler(handler)
            logging.getLogger("xtfclip_lib").setLevel(previous_level)
            handler.close()
        torch.set_num_threads(threads)
        cleanup_distributed()


def _train(cfg: Config, out: Path, env: DistEnv, resume: bool) -> dict:
    """The body of `train`, in the order of the module docstring.

    One function on purpose, as nanoGPT's loop is: its steps share the model, loader, schedule,
    selection and best-epoch state, and read top-down in the order they happen; only the final
    test is a function of its own.
    """
    # -- setup ------------------------------------------------------------------------------
    started = time.perf_counter()
    device, main = env.device, env.is_main
    seed_everything(cfg.train.seed)
    if cfg.train.epochs < 1:
        raise ValueError(f"train.epochs must be >= 1, got {cfg.train.epochs}")
    if cfg.train.select_on not in ("val", "test"):
        raise ValueError(f"train.select_on={cfg.train.select_on!r}; expected 'val' or 'test'")
    shard = dict(rank=env.rank, world_size=env.world_size)

    # -- data -------------------------------------------------------------------------------
    data = load_agvpreid(cfg.data.root)
    train_set, val_query, val_gallery = split_validation(data.train, cfg.data.num_val_ids, cfg.train.seed)
    label_of = relabel(train_set)
    test_lists, test_cases = test_protocol(data)
    val_lists, val_cases = validation_protocol(val_query, val_gallery, data.attributes["train"])
    if cfg.train.select_on == "test":
        logger.warning("train.select_on='test': the best epoch is chosen ON THE TEST SET; its test "
                       "metrics are optimistic (METHOD §7)")
        select_lists, select_cases, selection = test_lists, test_cases, "test"
    else:
        select_lists, select_cases, selection = val_lists, val_cases, "val" if val_query else "last"
    loader = build_train_loader(cfg, train_set, label_of, seed=cfg.train.seed, **shard)
    logger.info("%d training tracklets of %d identities, %d validation identities; selection on %s; %d training "
                "processes", len(train_set), len(label_of), cfg.data.num_val_ids, selection, env.world_size)

    # -- model, criterion, optimiser --------------------------------------------------------
    model = build_model(cfg, num_classes=len(label_of)).to(device)
    criterion = Criterion(cfg.loss, cfg.features, len(label_of), cfg.data.num_frames).to(device)
    optimizer = build_optimizer(model, cfg.train)
    schedule = EpochSchedule(optimizer, cfg.train)
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    meta = ckpt.checkpoint_meta(cfg, len(label_of))
    parts = dict(model=model, optimizer=optimizer, scheduler=schedule, scaler=scaler, criterion=criterion)

    # -- resume check, CLIP-Memory, score of the untrained model, then the saved state --------
    resuming = resume and (out / "last.pt").is_file()
    state = ckpt.load_checkpoint(out / "last.pt") if resuming else None   # on CPU; loading copies
    if resuming:
        _check_resumable(state, cfg, out / "last.pt", len(label_of))
    if main:
        save_config(cfg, out / "config.yaml")
        (out / "summary.json").unlink(missing_ok=True)     # continuing a finished run: unfinished again
    if not resuming:
        if main:       # leftovers of an attempt killed before its first checkpoint
            (out / "best.pt").unlink(missing_ok=True)
        model.set_memory(build_clip_memory(model, train_set, label_of, cfg, device, **shard).to(device))
    if broadcast_object(not (resuming and (out / "test_metrics_before.csv").is_file())):
        sets, table = _evaluate(model, test_lists, test_cases, cfg, env)   # "before" of before/after
        if main:   # the features too, so the untrained model can be scored with and without the mask
            save_features(out / FEATURES_DIR, UNTRAINED, untrained_key(cfg, test_lists), sets)
            table.assign(selected_on="untrained").to_csv(out / "test_metrics_before.csv", index=False)
            logger.info("untrained model on test:\n%s", table.to_string(index=False))
    start_epoch, best = 0, {"metric": -math.inf, "epoch": 0}
    if resuming:
        ckpt.restore_training_state(state, **parts)
        start_epoch, best = state["epoch"], {"metric": state["best_metric"], "epoch": state["best_epoch"]}
        logger.info("resumed from %s after epoch %d", out / "last.pt", start_epoch)
        del state
    _truncate_metrics(out, start_epoch, main)

    # -- the epoch loop ---------------------------------------------------------------------
    train_model = model
    if env.is_distributed:
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.train.compile:        # the training forward only; evaluation runs the eager `model`
        train_model = compile_model(train_model)
    for epoch in range(start_epoch, cfg.train.epochs):
        lr = schedule.set_epoch(epoch)
        set_loader_epoch(loader, epoch)
        row = {"epoch": epoch + 1, "lr": lr, "selection": selection}
        row |= train_one_epoch(train_model, criterion, loader, optimizer, scaler, cfg, env, amp_dtype, epoch)
        criterion.next_epoch()
        last_epoch = epoch + 1 == cfg.train.epochs
        if selection != "last" and ((epoch + 1) % cfg.train.eval_every_epochs == 0 or last_epoch):
            _, table = _evaluate(model, select_lists, select_cases, cfg, env)
            if main:
                scores = table.iloc[-1]       # the overall row (the only row for validation)
                row |= {f"{selection}_{k}": float(scores[k]) for k in METRIC_NAMES}
                if scores["R1"] + scores["mAP"] > best["metric"]:
                    best = {"metric": float(scores["R1"] + scores["mAP"]), "epoch": epoch + 1}
                    ckpt.save_checkpoint(out / "best.pt", {"model": model.state_dict(), "meta": meta,
                                                           "config": to_dict(cfg), "epoch": epoch + 1})
        if main:
            _append_metrics(out, row)
            ckpt.save_checkpoint(out / "last.pt", ckpt.training_state(
                **parts, epoch=epoch + 1, best_metric=best["metric"], best_epoch=best["epoch"],
                config=to_dict(cfg), meta=meta))
        barrier()

    # -- the test set, once, on the selected checkpoint -------------------------------------
    return _final_test(model, cfg, env, out, test_lists, test_cases, selection, best, started)


def _final_test(model, cfg: Config, env: DistEnv, out: Path, test_lists, test_cases, selection: str,
                best: dict, started: float) -> dict:
    """Score the test set once on the selected checkpoint; write test_metrics.csv, the test
    features and summary.json (last: its presence means the run finished). Returns the summary
    ({} on ranks other than the main one)."""
    main = env.is_main
    chosen = out / ("best.pt" if selection != "last" and (out / "best.pt").is_file() else "last.pt")
    model.load_state_dict(ckpt.load_checkpoint(chosen)["model"])
    sets, table = _evaluate(model, test_lists, test_cases, cfg, env)
    if not main:
        return {}
    key = features_key(ckpt.file_digest(chosen), cfg,
                       data_manifest_digest([t for ts in test_lists.values() for t in ts]))
    save_features(out / FEATURES_DIR, "test", key, sets)
    table = table.assign(selected_on=selection)      # how the checkpoint was chosen: val/test/last
    table.to_csv(out / "test_metrics.csv", index=False)
    summary = {"run": str(out), "config_digest": config_digest(cfg), "epochs": cfg.train.epochs,
               "selected_on": selection, "checkpoint": chosen.name, "best_epoch": best["epoch"],
               "best_metric": best["metric"], "features_key": key,
               "test": table.to_dict(orient="records"),
               "test_before": pd.read_csv(out / "test_metrics_before.csv").to_dict(orient="records"),
               "elapsed_s": round(time.perf_counter() - started, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    logger.info("test metrics (checkpoint %s, selected on %s):\n%s", chosen.name, selection,
                table.to_string(index=False))
    return summary


def train_one_epoch(model, criterion, loader, optimizer, scaler, cfg: Config, env: DistEnv,
                    amp_dtype: torch.dtype | None, epoch: int) -> dict:
    """One pass of the identity sampler (or ``train.steps_per_epoch`` steps); mean of every term.

    Non-finite losses skip the step; ``train.max_nonfinite_steps`` of them in a row stop training
    with a RuntimeError. Gradient centralisation (switch) runs on the (scaled) gradients.
    """
    model.train()
    criterion.train()
    device = env.device
    num_cameras = unwrap_model(model).num_cameras
    num_steps = min(len(loader), cfg.train.steps_per_epoch or len(loader))
    sums: dict[str, float] = defaultdict(float)
    steps = skipped = in_a_row = num_tracklets = 0
    start = time.perf_counter()
    bar = tqdm(loader, total=num_steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
               disable=not env.is_main)
    for step, batch in enumerate(bar):
        if step >= num_steps:
            break
        check_camera_ids(batch["camids"], num_cameras)                 # on the CPU: no device sync
        clips = batch["clips"].to(device, non_blocking=True)         # (B, T, 3, H, W)
        labels = batch["pids"].to(device, non_blocking=True)         # (B,)
        with autocast(device, amp_dtype):
            out = model(clips, batch["camids"].to(device, non_blocking=True))
        # losses and their label-smoothing state in fp32 (METHOD §7, mixed precision)
        loss, terms = criterion({k: v.float() for k, v in out.items()}, labels)
        finite = torch.isfinite(loss.detach()).float()
        if env.is_distributed:               # every rank must skip together, or DDP hangs
            finite = all_reduce_sum(finite) / env.world_size
        optimizer.zero_grad(set_to_none=True)
        if finite.item() < 1.0:
            skipped, in_a_row = skipped + 1, in_a_row + 1
            logger.warning("epoch %d step %d: non-finite loss %s, step skipped (%d in a row)",
                           epoch + 1, step, terms["loss"], in_a_row)
            if in_a_row >= cfg.train.max_nonfinite_steps:
                raise RuntimeError(f"{in_a_row} non-finite losses in a row at epoch {epoch + 1} step "
                                   f"{step} (train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); "
                                   f"last terms: {terms}. Lower train.base_lr or set train.amp=off")
            continue
        in_a_row = 0
        scaler.scale(loss).backward()
        if cfg.features.grad_centralization:
            centralize_gradients(model.parameters())
        scaler.step(optimizer)
        scaler.update()
        steps += 1
        num_tracklets += clips.shape[0]
        for name, value in terms.items():
            sums[name] += value
        bar.set_postfix(loss=f"{terms['loss']:.3f}", acc=f"{terms['acc_img']:.2f}")
        if env.is_main and (step + 1) % cfg.train.log_every_steps == 0:
            logger.info("epoch %d step %d/%d loss %.4f acc_img %.3f", epoch + 1, step + 1, num_steps,
                        terms["loss"], terms["acc_img"])
    elapsed = time.perf_counter() - start
    means = {name: total / max(steps, 1) for name, total in sums.items()}
    return {**means, "steps": steps, "skipped_steps": skipped, "epoch_s": round(elapsed, 2),
            "tracklets_per_s": num_tracklets * env.world_size / max(elapsed, 1e-9)}


# --------------------------------------------------------------------------------------------
# Helpers

def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)`` (``train.compile``) drawing dropout masks from torch's own generator
    (inductor's ``fallback_random``), so that a seed gives the masks of the eager model."""
    return torch.compile(model, options={"fallback_random": True})


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while isinstance(model, DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, DistributedDataParallel) else model._orig_mod
    return model


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _evaluate(model, lists, cases, cfg: Config, env: DistEnv):
    """Features on every rank (sharded, gathered); the per-case table on rank 0 (None elsewhere)."""
    sets = encode_lists(model, lists, cfg, env.device, rank=env.rank, world_size=env.world_size)
    return sets, (score_cases(sets, lists, cases, cfg) if env.is_main else None)


def _open_run_folder(out: Path, cfg: Config, *, resume: bool, overwrite: bool, main: bool):
    """Check and prepare the run folder and log to train.log (main process).

    Returns (train.log handler, the package logger's previous level) on the main process.
    """
    problem = None
    if main:
        finished, started = (out / "summary.json").is_file(), (out / "last.pt").is_file()
        if finished and not overwrite and (not resume or _summary_epochs(out) >= cfg.train.epochs):
            problem = (f"run folder {out} holds a finished run of {_summary_epochs(out)} epochs "
                       f"(summary.json); pass overwrite=True (--overwrite) to replace it, "
                       f"resume=True with more train.epochs (--epochs) to continue it, or "
                       f"choose another folder")
        elif started and not (resume or overwrite):
            problem = (f"run folder {out} holds an unfinished run (last.pt); pass resume=True "
                       f"(--resume) to continue it or overwrite=True (--overwrite) to replace it")
    problem = broadcast_object(problem)        # every rank stops, not only rank 0
    if problem:
        raise ValueError(problem)
    if main and overwrite:
        for name in RUN_FILES:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ckpt.remove_stale_temporaries(out):
            logger.info("removed %s, left by a checkpoint save that was interrupted", stale.name)
    barrier()
    if not main:
        return None
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("xtfclip_lib")
    # Without logging configured (a notebook) INFO would not even be created: let train.log have
    # it. A configured root (the CLI, --quiet) is respected: train.log gets what the console gets.
    previous_level = package_logger.level
    if not logging.getLogger().handlers and package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    return handler, previous_level


def _summary_epochs(out: Path) -> int:
    return int(json.loads((out / "summary.json").read_text()).get("epochs", 0))


def _check_resumable(state: dict, cfg: Config, path: Path, num_classes: int) -> None:
    """Refuse to resume with another input size, arch, class count or config (except
    `RESUMABLE_CHANGES`), naming what differs."""
    ckpt.check_compatible(state["meta"], cfg, path, num_classes)
    saved = to_dict(from_dict(state["config"], str(path)))   # keys added since: their defaults
    changed = [d for d in ckpt.config_differences(saved, to_dict(cfg))
               if d.split(":")[0] not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"cannot resume {path} with another config: {'; '.join(changed)}; only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change (or pass --overwrite)")


def _append_metrics(out: Path, row: dict) -> None:
    """Append one epoch to metrics.jsonl and rewrite metrics.csv from it."""
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)


def _truncate_metrics(out: Path, epochs_done: int, main: bool) -> None:
    """Drop metric rows of epochs after the checkpoint (written before a kill, redone now)."""
    path = out / "metrics.jsonl"
    if not main or not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["epoch"] <= epochs_done]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
