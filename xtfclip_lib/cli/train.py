"""`python -m xtfclip_lib train`: train one model into a run folder (see `xtfclip_lib.engine`).

Single process::

    python -m xtfclip_lib train --preset tiny --variant x_tfclip \\
        --set features.attention_pooling=false --seed 0 --out results/runs/no_attention_pooling

Data-parallel (one process per GPU, or gloo on CPU)::

    torchrun --nproc_per_node 2 -m xtfclip_lib train --preset quick --out results/runs/ddp
"""
from __future__ import annotations

import argparse
import logging
import os

from xtfclip_lib.config import VARIANTS, available_presets, load_config
from xtfclip_lib.utils import check_output_dir


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model into a run folder",
        description="Train TF-CLIP / X-TFCLIP into a run folder: config.yaml, metrics.csv/.jsonl,\n"
                    "last.pt, best.pt, test_metrics.csv (+ the untrained model's\n"
                    "test_metrics_before.csv), summary.json, train.log. The best epoch is chosen on\n"
                    "held-out training identities (data.num_val_ids); the test set is scored once, on it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--preset", default="tiny",
                        help=f"shipped preset ({', '.join(available_presets())}) or a YAML file "
                             "(default: tiny)")
    parser.add_argument("--variant", default="x_tfclip", choices=sorted(VARIANTS),
                        help="x_tfclip: every switch on; tf_clip: every switch off (default: x_tfclip)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, repeatable, e.g. "
                             "--set features.attention_pooling=false --set train.base_lr=2.0e-4")
    parser.add_argument("--seed", type=int, default=None, help="train.seed (default: the preset's)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train.epochs (default: the preset's); with --resume it may be raised "
                             "to continue a finished run")
    parser.add_argument("--out", required=True, help="run folder, e.g. results/runs/NAME")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/last.pt (same config; only train.epochs, device, "
                             "threads and workers may change)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run files of OUT (a finished or unfinished run is "
                             "otherwise refused)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    check_output_dir(args.out)   # an unusable --out is refused before anything is loaded
    from xtfclip_lib.engine import train   # keeps `--help` fast: torch and open_clip load only to train

    if int(os.environ.get("RANK", "0")) > 0:   # under torchrun only rank 0 talks
        logging.getLogger().setLevel(logging.WARNING)
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(args.preset, args.variant, overrides)
    train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    return 0
