"""Clothing colours from pixels, and how much of them a caption says.

Colours come from the pixels, not from the generator, so the same captions can be written for the
real AG-VPReID training set: every pixel of a fixed torso and thigh region of a ground-view crop
gets the name of the nearest of 14 prototype colours (COLOUR_NAMES) in CIE Lab, and the most
frequent name wins. By default the captions say colours only coarsely ("a bright jacket and dark
jeans", `caption_colours`): with all 14 colour names the captions of the synthetic set almost
identify a person, the pretrained CLIP is then already a re-ID model, and re-ID training has
nothing left to show (METHOD §8).
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np

from xtfclip_lib.data import Tracklet
from xtfclip_lib.pretrain.config import COLOUR_WORDS

logger = logging.getLogger(__name__)

# Named clothing colours and a prototype RGB each; a pixel gets the name of the nearest prototype
# in CIE Lab. Neutral and dark colours dominate street clothing, so they are split finer.
COLOUR_NAMES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (28, 28, 30)), ("grey", (124, 124, 126)), ("white", (232, 232, 228)),
    ("navy", (34, 44, 90)), ("blue", (50, 90, 172)), ("light blue", (142, 178, 216)),
    ("beige", (196, 178, 138)), ("brown", (106, 70, 44)), ("red", (170, 38, 44)),
    ("pink", (220, 140, 166)), ("orange", (226, 122, 44)), ("yellow", (226, 198, 56)),
    ("green", (54, 116, 62)), ("purple", (104, 58, 128)),
)
# Clothing is mostly seen in partial shade, darker than its nominal colour: prototypes are
# compared at this fraction of their RGB.
SHADE = 0.9
# Body regions of an upright ground-view crop, as fractions of (height, width): rows, columns.
# The lower region sits at the hips and upper thighs, where trousers fill the width; lower down
# a walking person's legs part and the background shows between them.
UPPER_REGION = ((0.26, 0.44), (0.38, 0.62))
LOWER_REGION = ((0.52, 0.62), (0.40, 0.60))


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in 0..255 -> (..., 3) CIE Lab (D65)."""
    c = np.asarray(rgb, np.float32) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192],
                        [0.1805, 0.0722, 0.9505]], np.float32)
    xyz /= np.array([0.9505, 1.0, 1.089], np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


_PROTOTYPES_LAB = _srgb_to_lab(SHADE * np.array([rgb for _, rgb in COLOUR_NAMES], np.float32))


def name_colours(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB pixels -> (N,) index into COLOUR_NAMES of the nearest prototype in Lab."""
    lab = _srgb_to_lab(pixels.reshape(-1, 3))
    return ((lab[:, None, :] - _PROTOTYPES_LAB[None]) ** 2).sum(-1).argmin(1)


def _region(frames: np.ndarray, region: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
    (r0, r1), (c0, c1) = region
    H, W = frames.shape[1:3]
    return frames[:, int(r0 * H):max(int(r1 * H), int(r0 * H) + 1),
                  int(c0 * W):max(int(c1 * W), int(c0 * W) + 1)].reshape(-1, 3)


def clothing_colours(frames: np.ndarray) -> tuple[str | None, str | None]:
    """(upper, lower) colour names of the person in (N, H, W, 3) uint8 upright crops.

    Every pixel of a fixed torso region and a fixed thigh region gets a colour name; the most
    frequent name over all N frames wins, so background pixels, lighting and one bad frame are
    outvoted. Meant for ground-view crops (the body is upright and fills the crop, as on the real
    set); returns (None, None) for no frames.
    """
    if len(frames) == 0:
        return None, None
    names = []
    for region in (UPPER_REGION, LOWER_REGION):
        counts = np.bincount(name_colours(_region(frames, region)), minlength=len(COLOUR_NAMES))
        names.append(COLOUR_NAMES[int(counts.argmax())][0])
    return names[0], names[1]


def identity_colours(tracklets: Sequence[Tracklet], frames_of: Callable[[Tracklet], np.ndarray]
                     ) -> dict[int, tuple[str | None, str | None]]:
    """pid -> (upper, lower) clothing colours estimated from that identity's crops.

    `frames_of(tracklet)` returns its (N, H, W, 3) uint8 frames. Ground tracklets are used when
    an identity has any (an aerial view shows the head and shoulders, not the trousers); else its
    aerial ones, with a log line.
    """
    by_pid: dict[int, list[Tracklet]] = {}
    for t in tracklets:
        by_pid.setdefault(t.pid, []).append(t)
    colours = {}
    for pid, own in sorted(by_pid.items()):
        chosen = [t for t in own if t.platform == "ground"] or own
        if chosen is own and any(t.platform == "aerial" for t in own):
            logger.info("person %d has no ground tracklet; clothing colours come from aerial crops", pid)
        colours[pid] = clothing_colours(np.concatenate([frames_of(t) for t in chosen]))
    return colours


# What a caption says of a clothing colour when the words are "coarse": how dark or vivid it is,
# not which of the 14 named colours (see `caption_colours`).
COARSE_COLOURS: dict[str, str] = {
    "black": "dark", "navy": "dark", "brown": "dark", "purple": "dark",
    "grey": "dull", "beige": "dull", "light blue": "pale", "white": "pale", "pink": "pale",
    "blue": "bright", "red": "bright", "orange": "bright", "yellow": "bright", "green": "bright",
}


def caption_colours(colours: Mapping[int, tuple[str | None, str | None]], words: str
                    ) -> dict[int, tuple[str | None, str | None]]:
    """The clothing colours as pretraining captions say them: ``"named"`` (the 14 names of
    COLOUR_NAMES), ``"coarse"`` (dark / dull / pale / bright, `COARSE_COLOURS`) or ``"none"``.

    METHOD §8 wants a tiny CLIP that knows people but leaves telling them apart to re-ID
    training: with every colour named, caption-level knowledge alone almost identifies a person
    in the synthetic set, and re-ID training has nothing left to add.
    """
    if words not in COLOUR_WORDS:
        raise ValueError(f"colour_words={words!r}; expected one of {COLOUR_WORDS}")
    if words == "named":
        return dict(colours)
    if words == "none":
        return {pid: (None, None) for pid in colours}
    return {pid: tuple(None if c is None else COARSE_COLOURS[c] for c in pair) for pid, pair in colours.items()}
