"""The report's context: what the workbook's numbers are measured on, in a few plain lines.

Read from the finished studies' own configs (never from the arguments), so the label belongs to
the numbers; `seed_counts` says how many seeds each trained model has.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from xtfclip_lib.data import MANIFEST
from xtfclip_lib.workbook.report import finished_seeds

log = logging.getLogger(__name__)


def report_context(preset: str, overrides: list[str], out_dir: str | Path) -> dict:
    """What the workbook's numbers are measured on, for the report's opening lines.

    Read from the studies' own resolved configs (``OUT/studies/x_tfclip/seed*/config.yaml``;
    `report.check_same_settings` makes sure the other studies match it), never from the
    arguments, so the label always belongs to the numbers: the preset and the overrides are the
    differences of that config from its shipped preset. `preset` and `overrides`, what the
    caller runs with, only add a warning when they resolve to other settings than the studies'.
    """
    from xtfclip_lib.config import load_config, load_config_file, to_dict
    from xtfclip_lib.engine import config_differences

    seeds_done = finished_seeds(Path(out_dir) / "studies" / "x_tfclip")
    if not seeds_done:
        raise FileNotFoundError(f"the report context needs a finished x_tfclip study under "
                                f"{Path(out_dir) / 'studies' / 'x_tfclip'}")
    cfg = load_config_file(seeds_done[0] / "config.yaml")
    seed = [f"train.seed={cfg.train.seed}"]
    try:
        shipped = to_dict(load_config(cfg.name, "x_tfclip", seed))
        changed = [d.split(": ")[0] for d in config_differences(shipped, to_dict(cfg))]
        flat = _flatten(to_dict(cfg))
        trained_with = [f"{k}={_override_value(flat[k])}" for k in changed]
    except (KeyError, FileNotFoundError):            # a preset file that is not shipped
        trained_with = list(json.loads((seeds_done[0] / "done.json").read_text()).get("overrides", []))
    asked = config_differences(to_dict(load_config(preset, "x_tfclip", [*overrides, *seed])), to_dict(cfg))
    asked = [d for d in asked if not d.startswith("train.num_threads:")]   # the workbook's own share
    if asked:
        more = f" and {len(asked) - 4} more" if len(asked) > 4 else ""
        log.warning("the report describes the studies as trained, not the preset %r and overrides %s "
                    "it was asked for: %s%s", preset, list(overrides), "; ".join(asked[:4]), more)
    manifest = Path(cfg.data.root) / MANIFEST
    if manifest.is_file():
        args = json.loads(manifest.read_text()).get("args", {})
        dataset = (f"the synthetic aerial-ground video set ({cfg.data.root}: {args.get('num_ids', '?')} "
                   f"identities, seed {args.get('seed', '?')}), not AG-VPReID")
    else:
        dataset = f"the dataset at {cfg.data.root}"
    backbone = {"": "randomly initialised (no pretraining)",
                "openai": "OpenAI CLIP weights"}.get(cfg.model.pretrained,
                                                     f"weights from {cfg.model.pretrained}")
    seeds = {folder.name: len(finished_seeds(folder))
             for folder in sorted((Path(out_dir) / "studies").glob("*")) if folder.is_dir()}
    return {"dataset": dataset, "backbone": f"{cfg.model.arch}, {backbone}",
            "preset": f"{cfg.name} ({cfg.train.epochs} epochs, input {cfg.data.image_size_hw[0]}x"
                      f"{cfg.data.image_size_hw[1]}, T={cfg.data.num_frames}, "
                      f"P x K = {cfg.data.num_ids_per_batch} x {cfg.data.num_tracklets_per_id})",
            "overrides": ", ".join(trained_with) or "none",
            "seeds": seed_counts(seeds),
            "model selection": f"on {cfg.train.select_on} "
                               + ("(held-out training identities)" if cfg.train.select_on == "val"
                                  else "(the test set itself: optimistic)")}


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _override_value(value) -> str:
    """A config value as `--set` writes it (``false``, ``[64, 32]``, ``data/x``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_override_value(v) for v in value) + "]"
    return str(value)


def seed_counts(seeds: dict[str, int]) -> str:
    """Finished seeds per trained model in a few words, grouped by count, e.g. "tf_clip and
    x_tfclip: 3 seeds each; the other 14 trained models: 1 seed each"."""
    groups: dict[int, list[str]] = {}
    for name, count in seeds.items():
        groups.setdefault(count, []).append(name)
    if not groups:
        return "none"
    largest = max(groups, key=lambda n: (len(groups[n]), -n))
    parts = []
    for count in sorted(groups, reverse=True):
        names = groups[count]
        if len(names) > 3 and count == largest:
            who = f"the other {len(names)} trained models" if len(groups) > 1 else f"all {len(names)} trained models"
        else:
            who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        unit = "seed" if count == 1 else "seeds"
        parts.append(f"{who}: {count} {unit}" + (" each" if len(names) > 1 else ""))
    return "; ".join(parts)
