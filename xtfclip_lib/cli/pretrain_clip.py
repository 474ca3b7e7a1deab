"""`python -m xtfclip_lib pretrain-clip`: pretrain the tiny CLIP offline on the training crops.

Example: ``python -m xtfclip_lib pretrain-clip --data data/synthetic-ag --out data/tiny-clip/tiny_clip.pt``.
The checkpoint is what the ``tiny`` preset loads as ``model.pretrained`` (see `xtfclip_lib.pretrain`).
"""
from __future__ import annotations

import argparse
import logging

from xtfclip_lib.config import PRETRAIN_STEPS, PRETRAIN_THREADS

logger = logging.getLogger(__name__)


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
    parser.add_argument("--steps", "--max-steps", dest="steps", type=int, default=PRETRAIN_STEPS,
                        help="pretraining steps: the whole budget; the same steps, seed and "
                             "--threads give a byte-identical checkpoint on any load (default: "
                             "%(default)s, the embedded default's calibration)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="optional safety ceiling: reaching it is an error and writes "
                             "nothing; it never shortens the run (default: none)")
    parser.add_argument("--threads", type=int, default=PRETRAIN_THREADS,
                        help="torch CPU threads while pretraining; part of what makes the result "
                             "reproducible (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling and "
                        "augmentation (default: %(default)s)")
    parser.add_argument("--arch", default="tiny-clip",
                        help="open_clip model name or one of xtfclip_lib/model/configs "
                             "(default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="square crop size in pixels (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="identities (captions) per step (default: the library's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the library's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (without it, an existing file is an error)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from xtfclip_lib.pretrain import pretrain_tiny_clip

    optional = {name: value for name, value in (("batch_size", args.batch_size), ("lr", args.lr))
                if value is not None}
    metrics = pretrain_tiny_clip(
        args.data, args.out, arch=args.arch, image_size=args.image_size,
        steps=args.steps, max_seconds=args.max_seconds, num_threads=args.threads, seed=args.seed,
        overwrite=args.overwrite, progress=not args.no_progress, **optional)
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
