"""Colour: clothing jitter, illumination and camera cast as affine maps on RGB.

`_camera_transform` is one camera's cast times one tracklet's lighting, `_label_lut` the colour
of every label after jitter and camera, `_colourise` the 2x-downsampled premultiplied frame and
`_apply_pattern` the stripes, checks and bands of the upper garment.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from xtfclip_lib.data.synth.identities import (BG, CLOTHING_MATERIALS, NUM_MATERIALS, SHADE_LEVELS, SHADOW,
                                               UPPER, UPPER2)
from xtfclip_lib.data.synth.params import CAMERAS, SynthParams

_LUMA = np.array([0.299, 0.587, 0.114])


def _hue_rotation(angle: float) -> np.ndarray:
    """(3, 3) rotation of RGB about the grey axis (Rodrigues): a hue shift keeping brightness."""
    k = np.ones(3) / math.sqrt(3)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _saturation(factor: float) -> np.ndarray:
    return factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), _LUMA)


def _camera_transform(cam: int, rng: np.random.Generator, params: SynthParams) -> tuple[np.ndarray, np.ndarray]:
    """(M (3, 3), offset (3,)) of camera cast x tracklet illumination: rgb' = rgb @ M.T + offset."""
    spec = CAMERAS[cam]
    s = params.camera_cast * (params.ground_cast if spec.platform == "ground" else 1.0)
    gains = 1 + s * (np.array(spec.gains) - 1)
    sat = 1 + s * (spec.saturation - 1)
    contrast = 1 + s * (spec.contrast - 1)
    bright = math.exp(rng.uniform(-1, 1) * params.illumination)
    temperature = np.exp(rng.normal(0, params.colour_temperature, 3))
    M = np.diag(gains * temperature) @ _saturation(sat) * contrast * bright
    offset = s * np.array(spec.haze) + (1 - contrast) * 110 * bright
    return M, offset


def _apply(rgb: np.ndarray, transform) -> np.ndarray:
    M, offset = transform
    return rgb @ M.T.astype(np.float32) + offset.astype(np.float32)


def _label_lut(colours: dict[int, tuple], rng: np.random.Generator, params: SynthParams,
               transform, extra: dict[int, tuple] | None = None) -> np.ndarray:
    """(256, 4) uint8 table: label -> premultiplied (r, g, b, coverage) after jitter and camera.

    The ground shadow is black at 45 % coverage, so plain "over" compositing darkens the ground.
    """
    base = np.zeros((NUM_MATERIALS, 3), np.float32)
    for m, c in {**colours, **(extra or {})}.items():
        base[m] = c
    shared_hue = rng.normal(0, params.hue_jitter)
    for m in CLOTHING_MATERIALS:
        hue = shared_hue + rng.normal(0, params.hue_jitter * 0.5)
        R = _hue_rotation(hue) @ _saturation(math.exp(rng.normal(0, params.sat_jitter)))
        base[m] = np.clip(R @ base[m] * math.exp(rng.normal(0, params.value_jitter)), 0, 255)
    lut = np.zeros((256, 4), np.float32)
    cols = _apply(base, transform)
    for m in range(NUM_MATERIALS):
        if m == BG:
            continue
        for s in range(4):
            lut[4 * m + s] = (0, 0, 0, 0.45 * 255) if m == SHADOW else (*(cols[m] * SHADE_LEVELS[s]), 255)
    return np.clip(np.round(lut), 0, 255).astype(np.uint8)


def _colourise(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """2x-supersampled labels (2H, 2W) uint8 -> (H, W, 4) float32 premultiplied colour + coverage.

    `np.take` and PIL's box `reduce` (on a 4-channel image without alpha semantics) are an order
    of magnitude faster than fancy indexing and a numpy mean for these small frames.
    """
    rgba = np.take(lut, labels, axis=0)
    return np.asarray(Image.fromarray(rgba, "CMYK").reduce(2), np.float32)


def _apply_pattern(labels: np.ndarray, pattern: str, period: float, top: float, bottom: float, x0: float) -> None:
    """Stripes / checks / reflective bands on the upper garment, in place (screen-aligned)."""
    upper = (labels >> 2) == UPPER
    if pattern in ("plain", "open") or not upper.any():
        return
    yy = np.arange(labels.shape[0])[:, None] - top
    xx = np.arange(labels.shape[1])[None, :] - x0
    p = max(period, 2.0)
    if pattern == "stripes":
        sel = (np.floor(yy / p) % 2 == 1) & np.ones_like(xx, bool)
    elif pattern == "checks":
        sel = (np.floor(yy / p) + np.floor(xx / p)) % 2 == 1
    else:
        span = max(bottom - top, 4.0)
        frac = yy / span
        sel = ((np.abs(frac - 0.45) < 0.06) | (np.abs(frac - 0.8) < 0.06)) & np.ones_like(xx, bool)
    hit = upper & sel
    labels[hit] = (UPPER2 * 4 + (labels[hit] & 3)).astype(labels.dtype)
