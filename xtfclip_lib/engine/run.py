"""A finished (or running) run folder: its trained model, its cached features, its scores.

`run_features` is what evaluating, submitting and the notebooks start from: the run's config,
tracklet lists, cases and test (or validation) features, taken from the feature cache when the
key matches and computed and cached otherwise.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from xtfclip_lib.config import Config, load_config_file
from xtfclip_lib.data import Tracklet, load_agvpreid, split_validation
from xtfclip_lib.engine.cache import FEATURES_DIR, data_manifest_digest, features_key, load_features, save_features
from xtfclip_lib.engine.checkpoint import check_compatible, file_digest, load_checkpoint
from xtfclip_lib.engine.distributed import resolve_device
from xtfclip_lib.engine.inference import FeatureSet, encode_lists
from xtfclip_lib.engine.protocol import RetrievalCase, score_cases, test_protocol, validation_protocol
from xtfclip_lib.model import build_model

__all__ = ["RunFeatures", "evaluate_run", "load_run_model", "run_features"]

logger = logging.getLogger(__name__)


@dataclass
class RunFeatures:
    """What evaluating or submitting a run needs: its config, lists, cases and features."""
    cfg: Config
    checkpoint: Path
    lists: dict[str, list[Tracklet]]
    cases: list[RetrievalCase]
    sets: dict[str, FeatureSet]


def load_run_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto"
                   ) -> tuple[Config, nn.Module, Path]:
    """The config (config.yaml) and trained model of a run folder, in eval mode.

    `checkpoint`: "best" (falls back to last.pt when the run kept no best.pt) or "last".
    """
    run = Path(run_dir)
    cfg = load_config_file(run / "config.yaml")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint={checkpoint!r}; expected 'best' or 'last'")
    path = run / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        path = run / "last.pt"
    state = load_checkpoint(path)
    check_compatible(state["meta"], cfg, path)
    # the weights come from the checkpoint: skip loading the pretrained backbone
    random_init = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=""))
    model = build_model(random_init, num_classes=int(state["meta"]["num_classes"]))
    model.load_state_dict(state["model"])
    return cfg, model.to(resolve_device(device)).eval(), path


def run_features(run_dir: str | Path, *, split: str = "test", flip_tta: bool | None = None,
                 checkpoint: str = "best", device: str = "auto") -> RunFeatures:
    """Features of a run's test set or validation split, from features/ when the key matches.

    The key covers the checkpoint's bytes, the resolved config (with this `flip_tta`) and the
    data manifest, so a cached file is used only for exactly what would be recomputed.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r}; expected 'test' or 'val'")
    cfg, model, path = load_run_model(run_dir, checkpoint, device)
    if flip_tta is not None:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, flip_tta=flip_tta))
    data = load_agvpreid(cfg.data.root)
    if split == "test":
        lists, cases = test_protocol(data)
    else:
        _, val_query, val_gallery = split_validation(data.train, cfg.data.num_val_ids, cfg.train.seed)
        if not val_query:
            raise ValueError(f"run {run_dir} has no validation split (data.num_val_ids=0)")
        lists, cases = validation_protocol(val_query, val_gallery, data.attributes["train"])
    key = features_key(file_digest(path), cfg,
                       data_manifest_digest([t for ts in lists.values() for t in ts]))
    folder = Path(run_dir) / FEATURES_DIR
    sets = load_features(folder, split, key)
    if sets is None:
        device_obj = next(model.parameters()).device
        sets = encode_lists(model, lists, cfg, device_obj)
        save_features(folder, split, key, sets)
    else:
        logger.info("re-using %s features %s", split, folder / f"{split}-{key}.npz")
    return RunFeatures(cfg, path, lists, cases, sets)


def evaluate_run(run_dir: str | Path, *, split: str = "test", mask: bool | None = None,
                 rerank: bool | None = None, flip_tta: bool | None = None,
                 checkpoint: str = "best", device: str = "auto") -> pd.DataFrame:
    """Per-case table (+ overall) of a run folder; None options take the run's config."""
    run = run_features(run_dir, split=split, flip_tta=flip_tta, checkpoint=checkpoint, device=device)
    return score_cases(run.sets, run.lists, run.cases, run.cfg, mask=mask, rerank=rerank)
