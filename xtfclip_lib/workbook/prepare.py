"""The backbone the studies start from: pretrained offline when the preset asks for a tiny CLIP.

`ensure_backbone` is what notebook 02 calls; `pretraining_target` is its rule for whether it
pretrains, which the workbook also reads to show that pretraining on its progress bar.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def pretraining_target(cfg, locate: Callable[[str], Path] = Path) -> Path | None:
    """The file `ensure_backbone` pretrains a tiny CLIP into, or None when it pretrains nothing.

    Only a shipped tiny config (`model.LOCAL_ARCHS`, pretrainable offline) whose
    `cfg.model.pretrained` names a file that does not exist yet is pretrained; ``""`` (random
    initialisation) and ``"openai"`` never are. `locate` turns the configured name into the path
    looked at: `Path` takes it in the working directory (a notebook's is the project root),
    `utils.resolve` in the project root from anywhere.
    """
    from xtfclip_lib.model import LOCAL_ARCHS

    weights = cfg.model.pretrained
    if cfg.model.arch not in LOCAL_ARCHS or weights in ("", "openai"):
        return None
    path = locate(weights)
    return None if path.is_file() else path


def ensure_backbone(cfg, steps: int | None = None) -> dict:
    """Make sure the backbone weights `cfg.model.pretrained` names exist; say where they come from.

    A missing file for a shipped tiny config is pretrained now on the training identities of
    `cfg.data.root` (`pretrain.pretrain_tiny_clip`) for `steps` steps (None: the calibrated
    ``PretrainConfig().steps``) with ``PretrainConfig().num_threads`` threads, so the same data give a
    byte-identical backbone on any machine and load. An existing tiny CLIP whose sidecar records
    another step count or data set is an error naming both, never silently re-used; any other
    missing file is an error naming it. Returns ``source`` plus, for a tiny CLIP, the metrics of
    its pretraining (JSON sidecar).
    """
    from xtfclip_lib.data import MANIFEST
    from xtfclip_lib.model import LOCAL_ARCHS
    from xtfclip_lib.pretrain import PretrainConfig

    steps = PretrainConfig().steps if steps is None else steps
    source = cfg.model.pretrained
    if source == "":
        return {"source": "random initialisation (no pretrained weights)", "arch": cfg.model.arch}
    if source == "openai":
        return {"source": "OpenAI CLIP weights (downloaded by open_clip)", "arch": cfg.model.arch}
    path = Path(source)
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        if pretraining_target(cfg) is None:       # not a shipped tiny config: nothing to pretrain
            raise FileNotFoundError(f"model.pretrained={source!r} not found; give a local OpenAI or "
                                    f"open_clip weights file, 'openai', or '' for random init")
        from xtfclip_lib.pretrain import pretrain_tiny_clip
        log.info("pretraining %s into %s (%d steps)", cfg.model.arch, path, steps)
        pretrain_tiny_clip(cfg.data.root, path, PretrainConfig(
            arch=cfg.model.arch, image_size=cfg.model.pretrained_image_size, steps=steps,
            seed=cfg.data.synth_seed))
    info = {"source": f"tiny CLIP pretrained offline ({path})", "arch": cfg.model.arch}
    if sidecar.is_file():
        info.update(json.loads(sidecar.read_text()))
        recorded = info.get("settings", {}).get("steps")
        if cfg.model.arch in LOCAL_ARCHS and recorded is not None and recorded != steps:
            raise ValueError(f"{path} was pretrained for {recorded} steps, not the {steps} asked for; "
                             f"delete it (and {sidecar.name}) to pretrain again, or ask for {recorded}")
        manifest = Path(cfg.data.root) / MANIFEST
        made_on = info.get("data", {}).get("manifest_digest")
        if made_on and manifest.is_file() and json.loads(manifest.read_text()).get("digest") != made_on:
            raise ValueError(f"{path} was pretrained on another version of {cfg.data.root} "
                             f"(manifest digest {made_on[:19]}...); delete it (and {sidecar.name}) "
                             f"to pretrain it on the current data")
    return info
