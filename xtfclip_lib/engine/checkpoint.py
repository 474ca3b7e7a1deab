"""Checkpoints that are written atomically and loaded without unpickling objects (METHOD §7).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

    model, optimizer, scheduler, scaler, criterion   state dicts (criterion: the OLS matrices)
    rng                                              python / numpy / torch / cuda RNG states
    epoch, best_metric, best_epoch                   progress (epoch = epochs completed)
    config                                           the resolved config (`config.to_dict`)
    meta                                             arch, image_size_hw, num_classes, num_frames

`save_checkpoint` writes a temporary file in the target folder, fsyncs it and renames it over
the target, so a crash mid-write leaves the previous checkpoint intact. `load_checkpoint` uses
``torch.load(weights_only=True)``: a file holding a pickled Python object is refused, and a
truncated file gives an error naming it.
"""
from __future__ import annotations

import hashlib
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from xtfclip_lib.config import Config
from xtfclip_lib.utils import atomic_write


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically (`files.atomic_write`: temporary sibling, fsync, rename)."""
    return atomic_write(path, lambda handle: torch.save(state, handle))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed `save_checkpoint` left in `folder` (``.NAME.*.tmp``).

    Called when a run folder is opened: one run writes a folder at a time, so any temporary
    found then belongs to an earlier, dead attempt. Returns what was removed.
    """
    removed = []
    for stale in Path(folder).glob(".*.pt.*.tmp"):
        stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint`, never unpickling arbitrary objects.

    Raises FileNotFoundError when `path` is missing and ValueError when it holds pickled Python
    objects (refused: loading them could run code) or is truncated / not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"checkpoint {path} contains pickled Python objects and is refused: only tensors, "
            f"numbers, strings, lists and dicts are loaded (torch.load weights_only=True); "
            f"{_unpickler_culprit(exc)}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        reason = str(exc).split(". ")[0]
        raise ValueError(
            f"checkpoint {path} is truncated or corrupt ({path.stat().st_size} bytes) and cannot "
            f"be read ({reason}). Delete it, or resume from another checkpoint.") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _unpickler_culprit(exc: Exception) -> str:
    """The line of torch's weights-only error that names the refused global, if any."""
    for line in str(exc).splitlines():
        if "Unsupported global" in line:
            return line.split("error:", 1)[-1].split(" by default")[0].strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def file_digest(path: str | Path, length: int = 16) -> str:
    """Short SHA-256 of a file's bytes (keys feature caches to the checkpoint that made them)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:length]


# --------------------------------------------------------------------------------------------
# RNG states as tensors and plain numbers (so that weights_only loading accepts them)

def rng_state() -> dict:
    """Every RNG the training loop draws from: python, numpy, torch CPU and every CUDA device."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state` (whatever device the checkpoint was mapped to)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].cpu().numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------------------------
# The training state

def training_state(*, model, optimizer, scheduler, scaler, criterion, epoch: int,
                   best_metric: float, best_epoch: int, config: dict, meta: dict) -> dict:
    """Everything `restore_training_state` needs to continue exactly where training stopped."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "criterion": criterion.state_dict(), "rng": rng_state(), "epoch": int(epoch),
            "best_metric": float(best_metric), "best_epoch": int(best_epoch),
            "config": config, "meta": meta}


def restore_training_state(state: dict, *, model, optimizer, scheduler, scaler, criterion) -> None:
    """Load a `training_state` into the live objects, RNG states included."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    criterion.load_state_dict(state["criterion"])
    set_rng_state(state["rng"])


# --------------------------------------------------------------------------------------------
# Compatibility of a checkpoint with a config

def checkpoint_meta(cfg: Config, num_classes: int) -> dict:
    """What a checkpoint must agree on with the config that loads it."""
    return {"arch": cfg.model.arch, "image_size_hw": list(cfg.data.image_size_hw),
            "num_frames": cfg.data.num_frames, "num_classes": int(num_classes)}


def check_compatible(meta: dict, cfg: Config, path: str | Path, num_classes: int | None = None) -> None:
    """Raise ValueError naming both values when `meta` (from a checkpoint) disagrees with `cfg`.

    METHOD §7: a checkpoint trained at one input size and loaded at another otherwise fails on a
    positional-embedding shape deep inside the model.
    """
    problems = []
    if meta.get("arch") != cfg.model.arch:
        problems.append(f"model.arch is {cfg.model.arch!r} but the checkpoint was trained with {meta.get('arch')!r}")
    want_hw = list(cfg.data.image_size_hw)
    if list(meta.get("image_size_hw", [])) != want_hw:
        problems.append(f"data.image_size_hw is {want_hw} but the checkpoint was trained at "
                        f"{list(meta.get('image_size_hw', []))}")
    if num_classes is not None and meta.get("num_classes") != num_classes:
        problems.append(f"the training split has {num_classes} identities but the checkpoint's "
                        f"classifiers have {meta.get('num_classes')}")
    if problems:
        raise ValueError(f"checkpoint {path} does not match the config: " + "; ".join(problems))


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two `config.to_dict` mappings."""
    keys = sorted(set(saved) | set(current))
    out: list[str] = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, name + "."))
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
