"""Shared helpers of the figures: saving, frame strips, image axes and column checks.

Also the colours and sizes every figure uses, so the platforms and matches look the same in all.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

logger = logging.getLogger(__package__)     # one logger for every figure: ``xtfclip_lib.workbook.plots``

PLATFORM_MARKERS: dict[str, str] = {"ground": "o", "aerial": "^"}
PLATFORM_COLORS: dict[str, str] = {"ground": "tab:blue", "aerial": "tab:orange"}
MATCH_COLOR = "tab:green"
MISMATCH_COLOR = "tab:red"
STRIP_HEIGHT_PX = 64          # every frame of a strip is resized to this height
STRIP_GAP_PX = 2              # white columns between frames of a strip


def save_figure(fig: Figure, path: str | os.PathLike | None, dpi: int = 110) -> Figure:
    """Write `fig` as a PNG to `path` (creating parent folders) when a path is given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
        logger.info("wrote %s", path)
    return fig


def evenly_spaced(num_items: int, num_picks: int) -> np.ndarray:
    """`num_picks` indices spread evenly over 0..num_items-1 (all of them when there are fewer)."""
    if num_items <= 0:
        raise ValueError(f"cannot pick frames from an empty sequence (num_items={num_items})")
    if num_picks <= 0:
        raise ValueError(f"num_picks must be positive, got {num_picks}")
    if num_items <= num_picks:
        return np.arange(num_items)
    return np.unique(np.round(np.linspace(0, num_items - 1, num_picks)).astype(int))


def load_frame(path: str | os.PathLike, height_px: int = STRIP_HEIGHT_PX) -> np.ndarray:
    """One frame as an (H, W, 3) uint8 array, resized to `height_px` keeping its aspect ratio."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width = max(1, round(image.width * height_px / image.height))
            return np.asarray(image.resize((width, height_px), Image.Resampling.BILINEAR))
    except FileNotFoundError:
        raise FileNotFoundError(f"frame {path} not found") from None
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def frame_strip(frames: Sequence[str], num_frames: int = 4,
                height_px: int = STRIP_HEIGHT_PX) -> np.ndarray:
    """Up to `num_frames` evenly spaced frames of one tracklet side by side: (H, W_total, 3) uint8.

    Frames keep their aspect ratio at a common height, so small aerial crops look as blurred as
    they are once enlarged; a thin white gap separates them.
    """
    picks = [load_frame(frames[i], height_px) for i in evenly_spaced(len(frames), num_frames)]
    gap = np.full((height_px, STRIP_GAP_PX, 3), 255, dtype=np.uint8)
    pieces: list[np.ndarray] = []
    for i, frame in enumerate(picks):
        pieces.extend([gap, frame] if i else [frame])
    return np.concatenate(pieces, axis=1)


def _image_axis(ax, image: np.ndarray, title: str | None = None, edge: str | None = None,
                fontsize: float = 7) -> None:
    """Show `image` without ticks; a coloured frame of thick spines when `edge` is given."""
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(edge is not None)
        if edge is not None:
            spine.set_edgecolor(edge)
            spine.set_linewidth(3.0)
    if title:
        ax.set_title(title, fontsize=fontsize)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what}: missing columns {missing}; got {list(frame.columns)}, "
                       f"expected at least {list(columns)}")
