"""What produced a study (METHOD §7, "Stale caches"): the feature cache's rule, applied to studies.

A study's numbers are a function of its resolved config, the data manifest and the backbone
weights (`study_key`); `study_state` compares a run folder with what is asked for, so a finished
study is re-used only when all three are equal, and anything else is named. `skip_summary` and
`refuse_stale_message` are the lines the workbook prints about them.
"""
from __future__ import annotations

import json
from pathlib import Path


class StaleStudyError(ValueError):
    """A finished study was made with other settings than the ones asked for; names what differs."""


def data_digest(root: str | Path) -> str:
    """The data manifest's digest by the feature cache's rule (`inference.data_manifest_digest`:
    every tracklet record and each frame file's size and modification time), over every split of
    the dataset at `root`, plus the attribute tables the soft-biometric mask reads. A missing
    root gives ``"missing"``, which matches nothing a finished study recorded."""
    from xtfclip_lib.data import CASE_DIRS, TRAIN_DIR, scan_split
    from xtfclip_lib.engine import data_manifest_digest, file_digest

    root = Path(root)
    if not root.is_dir():
        return "missing"
    folders = [root / TRAIN_DIR, *(root / d / side for d in CASE_DIRS.values() for side in ("query", "gallery"))]
    tracklets = [t for folder in folders if folder.is_dir() for t in scan_split(folder)]
    tables = sorted((root / "attributes").glob("*.csv"))
    return "-".join([data_manifest_digest(tracklets), *(file_digest(t, 8) for t in tables)])


def backbone_digest(cfg) -> str:
    """The backbone weights' identity as `inference.untrained_key` takes it: the file's digest
    when `cfg.model.pretrained` is a file, else the setting itself (``""``: random, ``openai``);
    a named file that does not exist (yet) gives ``"missing"``."""
    from xtfclip_lib.engine import file_digest

    weights = cfg.model.pretrained
    if weights in ("", "openai"):
        return weights or "random initialisation"
    return file_digest(weights) if Path(weights).is_file() else "missing"


def study_key(cfg, data: str | None = None) -> dict[str, str]:
    """What a study's numbers are a function of: the resolved config's digest (seed included),
    the data manifest (`data_digest`, or the precomputed `data`) and the backbone weights
    (`backbone_digest`). A finished study is re-used only under an equal key."""
    from xtfclip_lib.config import config_digest

    return {"config": config_digest(cfg), "data manifest": data or data_digest(cfg.data.root),
            "backbone weights": backbone_digest(cfg)}


def study_state(run_dir: str | Path, cfg, key: dict[str, str]) -> tuple[str, list[str]]:
    """Whether the run folder `run_dir` holds this study: ``(state, differences)``.

    States: ``"new"`` (nothing there), ``"done"`` (finished with an equal `study_key`: re-use it),
    ``"partial"`` (interrupted with the same config: the engine resumes it) and ``"stale"``
    (finished or started with anything else). Each difference reads ``"<what>: <old> -> <new>"``,
    `what` being a dotted config key, ``data manifest``, ``backbone weights`` or ``study key``.
    """
    from xtfclip_lib.engine import config_differences
    from xtfclip_lib.config import load_config_file, to_dict

    run_dir = Path(run_dir)
    done, config = run_dir / "done.json", run_dir / "config.yaml"
    if not done.is_file() and not config.is_file():
        return "new", []
    differs = []
    if config.is_file():
        differs += config_differences(to_dict(load_config_file(config)), to_dict(cfg))
    if not done.is_file():
        return ("stale", differs) if differs else ("partial", [])
    recorded = json.loads(done.read_text()).get("key")
    if not isinstance(recorded, dict):
        differs.append("study key: none recorded (made by an older version) -> this version's")
    else:
        differs += [f"{part}: {recorded.get(part)} -> {key[part]}" for part in key
                    if part != "config" and recorded.get(part) != key[part]]
        if not differs and recorded.get("config") != key["config"]:
            differs.append(f"config digest: {recorded.get('config')} -> {key['config']}")
    return ("stale", differs) if differs else ("done", [])


def _what_differs(differences: list[str]) -> list[str]:
    return list(dict.fromkeys(d.split(":")[0] for d in differences))


def skip_summary(states: list[tuple[str, list[str]]]) -> str:
    """One line on what the workbook does with its trained models, e.g. "trained models: 16
    already done with the same config, skipped; 4 retrained (made with other settings:
    train.epochs)". `states` are `study_state` results."""
    count = {s: sum(1 for state, _ in states if state == s) for s in ("done", "stale", "partial", "new")}
    parts = []
    if count["done"]:
        parts.append(f"{count['done']} already done with the same config, skipped")
    if count["stale"]:
        what = _what_differs([d for state, diffs in states if state == "stale" for d in diffs])
        parts.append(f"{count['stale']} retrained (made with other settings: {', '.join(what)})")
    if count["partial"]:
        parts.append(f"{count['partial']} resumed")
    if count["new"]:
        parts.append(f"{count['new']} to train")
    return "trained models: " + ("; ".join(parts) or "none planned")


def refuse_stale_message(stale: list[tuple[Path, list[str]]], out: Path) -> str:
    """The one-line refusal of `--refuse-stale`: how many, the first folder and what differs."""
    folder, differences = stale[0]
    more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
    return (f"{folder.relative_to(out)}{more} were made with other settings "
            f"({'; '.join(differences)}); refusing to retrain them (--refuse-stale): drop the flag "
            f"to retrain, or choose another --out")
