"""`python -m xtfclip_lib pretrain-clip`: pretrain the tiny CLIP offline on the training crops.

Example: ``python -m xtfclip_lib pretrain-clip --data data/synthetic-ag --out data/tiny-clip/tiny_clip.pt``.
The checkpoint is what the ``tiny`` preset loads as ``model.pretrained`` (see `xtfclip_lib.pretrain`).
"""
from __future__ import annotations

import argparse
import logging

from xtfclip_lib.config import parse_override, with_override
from xtfclip_lib.pretrain import PretrainConfig

logger = logging.getLogger(__name__)

DEFAULTS = PretrainConfig()
# flag -> PretrainConfig field: shortcuts for the options set most often (they win over --set)
SHORTCUTS = {"steps": "steps", "threads": "num_threads", "seed": "seed", "arch": "arch",
             "image_size": "image_size", "batch_size": "batch_size", "lr": "lr"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain-clip", help="pretrain the tiny CLIP on training crops with attribute captions",
        description="Contrastively pretrain a small open_clip CLIP (image and text towers) on the "
                    "training identities of an AG-VPReID-layout set, with captions written from "
                    "each person's attributes, clothing colours and camera, at a square "
                    "resolution. Writes an open_clip checkpoint and a .json sidecar with the "
                    "metrics (loss curve, zero-shot caption retrieval on held-out training "
                    "identities before and after). Test identities are never read.")
    parser.add_argument("--data", default="data/synthetic-ag",
                        help="dataset root in the AG-VPReID layout (default: %(default)s)")
    parser.add_argument("--out", default="data/tiny-clip/tiny_clip.pt",
                        help="checkpoint to write; the sidecar gets the same name with .json "
                             "(default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set one PretrainConfig field (repeatable), e.g. --set caption_dropout=0.2 "
                             "--set colour_words=named; fields: "
                             + ", ".join(f"{k}={v}" for k, v in vars(DEFAULTS).items()))
    parser.add_argument("--steps", "--max-steps", dest="steps", type=int, default=None,
                        help="pretraining steps: the whole budget; the same steps, seed and "
                             "--threads give a byte-identical checkpoint on any load (default: "
                             f"{DEFAULTS.steps}, the embedded default's calibration)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="optional safety ceiling: reaching it is an error and writes "
                             "nothing; it never shortens the run (default: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads while pretraining; part of what makes the result "
                             f"reproducible (default: {DEFAULTS.num_threads})")
    parser.add_argument("--seed", type=int, default=None, help="seed of initialisation, sampling and "
                        f"augmentation (default: {DEFAULTS.seed})")
    parser.add_argument("--arch", default=None,
                        help="open_clip model name or one of xtfclip_lib/model/configs "
                             f"(default: {DEFAULTS.arch})")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"square crop size in pixels (default: {DEFAULTS.image_size})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"identities (captions) per step (default: {DEFAULTS.batch_size})")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {DEFAULTS.lr:g})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (without it, an existing file is an error)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=_run)


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """PretrainConfig from the --set overrides, then the shortcut flags given, each checked as a
    training override is (an unknown key or a wrong type names it), then range-checked."""
    overrides = [parse_override(item) for item in args.overrides]
    overrides += [(field, getattr(args, flag)) for flag, field in SHORTCUTS.items()
                  if getattr(args, flag) is not None]
    config = PretrainConfig()
    for key, value in overrides:
        config = with_override(config, key, value, f"override {key}={value}")
    config.validate()
    return config


def _run(args: argparse.Namespace) -> int:
    config = pretrain_config(args)       # a bad option fails here, before torch is loaded
    from xtfclip_lib.pretrain import pretrain_tiny_clip

    metrics = pretrain_tiny_clip(args.data, args.out, config, max_seconds=args.max_seconds,
                                 overwrite=args.overwrite, progress=not args.no_progress)
    before, after = metrics["zero_shot_before"], metrics["zero_shot_after"]
    logger.info("%d steps, %.0f s; loss %.3f -> %.3f", metrics["steps"], metrics["seconds"],
                metrics["loss_first"], metrics["loss_last"])
    spread_before, spread_after = metrics["spread_before"], metrics["spread_after"]
    logger.info("tracklet features: mean pairwise cosine %.3f -> %.3f, varying energy %.1f %% -> %.1f %%",
                spread_before["mean_cosine"], spread_after["mean_cosine"],
                100 * spread_before["varying_energy"], 100 * spread_after["varying_energy"])
    logger.info("zero-shot caption retrieval on %d held-out identities (chance %.1f %%): "
                "top-1 %.1f %% -> %.1f %% (aerial %.1f %%, ground %.1f %%)", after["num_ids"],
                100 * after["chance"], 100 * before["top1"], 100 * after["top1"],
                100 * after["top1_aerial"], 100 * after["top1_ground"])
    return 0
