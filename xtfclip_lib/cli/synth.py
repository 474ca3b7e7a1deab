"""`python -m xtfclip_lib synth`: write the synthetic aerial-ground video re-ID set (METHOD §1, §8).

Example: ``python -m xtfclip_lib synth --root data/synthetic-ag`` (the embedded default: as many
identities and the seed as the run config's ``data.synth_ids`` and ``data.synth_seed``).

The set's options are the fields of `SynthConfig`, set with the dotted overrides of a run's config,
e.g. ``--set train_tracklets=[2,3] --set params.noise_std=0``; a bare `SynthParams` field name is
short for its ``params.`` key (``--set noise_std=0``). The flags ``--ids``, ``--seed``,
``--difficulty``, ``--palette-size``, ``--min-frames``, ``--max-frames`` and ``--distractors``
set one field each and win over ``--set``.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import fields

logger = logging.getLogger(__name__)

# Flag (its argparse dest) -> the SynthConfig key it sets.
SHORTCUTS: dict[str, str] = {"ids": "num_ids", "seed": "seed", "difficulty": "difficulty",
                             "palette_size": "params.palette_size", "min_frames": "min_frames",
                             "max_frames": "max_frames", "distractors": "distractors"}


def register(subparsers) -> None:
    from xtfclip_lib.data import SynthConfig, SynthParams

    default = SynthConfig()
    own = ", ".join(f.name for f in fields(SynthConfig) if f.name != "params")
    nuisance = ", ".join(f.name for f in fields(SynthParams))
    parser = subparsers.add_parser(
        "synth", help="generate the synthetic aerial-ground video person re-ID set",
        description="Render walking figures seen by 4 ground and 2 UAV cameras into the AG-VPReID "
                    "layout (train/, case1_aerial_to_ground/, case2_ground_to_aerial/, attributes/). "
                    "The same seed and options give byte-identical files.")
    parser.add_argument("--root", default="data/synthetic-ag", help="output folder (default: %(default)s)")
    parser.add_argument("--ids", type=int, default=None,
                        help=f"num_ids: identities in all, a third train, two thirds test "
                             f"(default: {default.num_ids})")
    parser.add_argument("--seed", type=int, default=None, help=f"seed: generator seed (default: {default.seed})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --root (without it, a non-empty root is an error)")
    parser.add_argument("--difficulty", type=float, default=None,
                        help="difficulty: multiplies every nuisance (colour jitter, illumination, clutter, "
                             "blur, noise, occlusion); 1.0 = the SynthParams defaults "
                             f"(default: {default.difficulty})")
    parser.add_argument("--palette-size", type=int, default=None,
                        help="params.palette_size: clothing colours in use, 2..16; fewer = more look-alikes "
                             f"(default: {default.params.palette_size})")
    parser.add_argument("--min-frames", type=int, default=None,
                        help=f"min_frames: shortest tracklet (default: {default.min_frames})")
    parser.add_argument("--max-frames", type=int, default=None,
                        help=f"max_frames: longest tracklet (default: {default.max_frames})")
    parser.add_argument("--distractors", type=int, default=None,
                        help=f"distractors: gallery-only identities per case (default: {default.distractors})")
    parser.add_argument("--workers", type=int, default=2,
                        help="render processes; output does not depend on it (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"set one SynthConfig field by its dotted key (repeatable; the flags above "
                             f"win over it), one of: {own}; or params.KEY (KEY alone works too; nuisance "
                             f"fields are then scaled by difficulty as well) with KEY one of: {nuisance}")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_run)


def _config(args: argparse.Namespace):
    """SynthConfig from the --set overrides, then from the shortcut flags given, each checked by
    the config's dotted override path (`xtfclip_lib.config.with_override`)."""
    from xtfclip_lib.config import parse_override, with_override
    from xtfclip_lib.data import SynthConfig

    config = SynthConfig()
    for item in args.overrides:
        key, value = parse_override(item)
        config = with_override(config, SynthConfig.resolve_key(key), value, f"--set {item}")
    for dest, key in SHORTCUTS.items():
        value = getattr(args, dest)
        if value is not None:
            config = with_override(config, key, value, f"--{dest.replace('_', '-')} {value}")
    return config


def _run(args: argparse.Namespace) -> int:
    from xtfclip_lib.data import generate_synthetic

    config = _config(args)   # a bad option fails here, before anything is written
    summary = generate_synthetic(args.root, config=config, overwrite=args.overwrite, workers=args.workers,
                                 progress=not args.no_progress)
    for folder, count in summary["counts"].items():
        logger.info("%-32s %4d ids %5d tracklets %6d frames", folder, count["ids"], count["tracklets"],
                    count["frames"])
    logger.info("manifest: %s/manifest.json (%s)", summary["root"], summary["digest"])
    return 0
