"""`python -m xtfclip_lib synth`: write the synthetic aerial-ground video re-ID set (METHOD §1, §8).

Example: ``python -m xtfclip_lib synth --root data/synthetic-ag`` (the embedded default: 300 ids, seed 0).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import fields, replace

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    from xtfclip_lib.config import DataConfig
    from xtfclip_lib.data.synth import SynthParams

    names = ", ".join(f.name for f in fields(SynthParams))
    parser = subparsers.add_parser(
        "synth", help="generate the synthetic aerial-ground video person re-ID set",
        description="Render walking figures seen by 4 ground and 2 UAV cameras into the AG-VPReID "
                    "layout (train/, case1_aerial_to_ground/, case2_ground_to_aerial/, attributes/). "
                    "The same seed and options give byte-identical files.")
    parser.add_argument("--root", default="data/synthetic-ag", help="output folder (default: %(default)s)")
    parser.add_argument("--ids", type=int, default=DataConfig.synth_ids,
                        help="identities in all: a third train, two thirds test (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DataConfig.synth_seed,
                        help="generator seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --root (without it, a non-empty root is an error)")
    parser.add_argument("--difficulty", type=float, default=1.0,
                        help="multiplies every nuisance (colour jitter, illumination, clutter, blur, "
                             "noise, occlusion); 1.0 = the SynthParams defaults (default: %(default)s)")
    parser.add_argument("--palette-size", type=int, default=None,
                        help="clothing colours in use, 2..16; fewer = more look-alikes (default: the generator's, 16)")
    parser.add_argument("--min-frames", type=int, default=8, help="shortest tracklet (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=64, help="longest tracklet (default: %(default)s)")
    parser.add_argument("--distractors", type=int, default=3,
                        help="gallery-only identities per case (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="render processes; output does not depend on it (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"set one SynthParams field (repeatable; nuisance fields are then scaled "
                             f"by --difficulty too), one of: {names}")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_run)


def _params(args: argparse.Namespace):
    """SynthParams from --palette-size and the --set overrides, each checked against its field."""
    from xtfclip_lib.data.synth import SynthParams

    params = SynthParams()
    types = {f.name: type(getattr(params, f.name)) for f in fields(SynthParams)}
    values = {}
    for item in args.overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise KeyError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
        try:
            values[key] = types[key](text) if types[key] is int else float(text)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} expects a {types[key].__name__}, got {text!r}") from None
    if args.palette_size is not None:
        values["palette_size"] = args.palette_size
    return replace(params, **values)


def _run(args: argparse.Namespace) -> int:
    from xtfclip_lib.data.synth import generate_synthetic

    summary = generate_synthetic(
        args.root, args.ids, args.seed, overwrite=args.overwrite, difficulty=args.difficulty,
        params=_params(args), min_frames=args.min_frames, max_frames=args.max_frames,
        distractors=args.distractors, workers=args.workers, progress=not args.no_progress)
    for folder, count in summary["counts"].items():
        logger.info("%-32s %4d ids %5d tracklets %6d frames", folder, count["ids"], count["tracklets"],
                    count["frames"])
    logger.info("manifest: %s/manifest.json (%s)", summary["root"], summary["digest"])
    return 0
