"""The feature cache: features kept in a run folder, keyed by what produced them (METHOD §7).

`save_features` / `load_features` keep features as ``.npz`` (arrays only, no pickle) under a key
made of the checkpoint digest, the resolved config (without the options that act after the
features) and the data manifest, so that a file is never re-used once any of these changes
("Stale caches"); a damaged or foreign file is a cache miss, never a crash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from xtfclip_lib.config import Config, EvalConfig, config_digest
from xtfclip_lib.data import Tracklet
from xtfclip_lib.engine.checkpoint import file_digest
from xtfclip_lib.engine.inference import FeatureSet
from xtfclip_lib.utils import atomic_write

__all__ = ["FEATURES_DIR", "UNTRAINED", "data_manifest_digest", "feature_config_digest", "features_key",
           "load_features", "save_features", "untrained_key"]

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"   # the cache's folder inside a run folder

def data_manifest_digest(tracklets: Sequence[Tracklet]) -> str:
    """Hash of the tracklet records and of each frame file's size and modification time."""
    sha = hashlib.sha256()
    for t in tracklets:
        sha.update(f"{t.name}|{t.pid}|{t.camid}|{len(t.frames)}\n".encode())
        for frame in t.frames:
            stat = os.stat(frame)
            sha.update(f"{frame}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return sha.hexdigest()[:16]


def feature_config_digest(cfg: Config) -> str:
    """Digest of the resolved config without the options that act after the features (the
    ``eval`` section, which holds re-ranking and the mask penalty, and the mask switch), so that
    evaluation variants re-use one set of features."""
    neutral = dataclasses.replace(cfg, eval=EvalConfig(),
                                  features=dataclasses.replace(cfg.features, soft_biometric_mask=True))
    return config_digest(neutral)


def features_key(checkpoint_digest: str, cfg: Config, manifest_digest: str) -> str:
    text = json.dumps([checkpoint_digest, feature_config_digest(cfg), manifest_digest])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Name of the test features of the untrained model (pretrained backbone, freshly initialised heads).
UNTRAINED = "untrained-test"


def untrained_key(cfg: Config, lists: dict[str, list[Tracklet]]) -> str:
    """Cache key of the untrained model's test features: the resolved config (seed included), the
    backbone weights file's digest and the data manifest; there is no checkpoint to digest."""
    weights = cfg.model.pretrained
    if weights and Path(weights).is_file():
        weights = file_digest(weights)
    return features_key(f"untrained:{cfg.train.seed}:{weights}", cfg,
                        data_manifest_digest([t for ts in lists.values() for t in ts]))


def save_features(folder: str | Path, name: str, key: str, sets: dict[str, FeatureSet]) -> Path:
    """Write ``folder/<name>-<key>.npz`` holding every set (arrays only, no pickled objects)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(key)}
    for split, fs in sets.items():
        arrays.update({f"{split}__features": fs.features, f"{split}__pids": fs.pids,
                       f"{split}__camids": fs.camids, f"{split}__names": np.array(fs.names, dtype=str)})
    return atomic_write(folder / f"{name}-{key}.npz", lambda handle: np.savez(handle, **arrays))


def load_features(folder: str | Path, name: str, key: str) -> dict[str, FeatureSet] | None:
    """The sets saved under exactly this `key`, or None (never features made by something else)."""
    path = Path(folder) / f"{name}-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            splits = sorted({k.rsplit("__", 1)[0] for k in data.files if "__" in k})
            return {s: FeatureSet(data[f"{s}__features"], data[f"{s}__pids"], data[f"{s}__camids"],
                                  [str(n) for n in data[f"{s}__names"]]) for s in splits}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        # truncated, empty, or not ours (object arrays are refused): recompute, never crash
        logger.warning("feature cache %s does not load (%s: %s); treating it as a cache miss",
                       path, type(exc).__name__, exc)
        return None
