"""Backgrounds and occluders: the street or ground plane behind the person, things passing in front.

Backgrounds are RGB before the camera transform; occluders are drawn into the label canvas, so
they take the tracklet's lighting and camera like the person.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from xtfclip_lib.data.synth.identities import METAL, OCC, OCC2
from xtfclip_lib.data.synth.params import FACADE_COLOURS, GROUND_COLOURS, SynthParams

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, amplitude: float) -> np.ndarray:
    small = rng.normal(0, amplitude, (max(2, h // cells), max(2, w // cells))).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.BILINEAR))


def _background(rng: np.random.Generator, h: int, w: int, aerial: bool, params: SynthParams,
                pal_rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 scene behind the person: a street (ground) or a ground plane (aerial).

    Clutter objects take clothing palette colours on purpose: a red car behind a person in grey
    must not make the tracklet trivially "red".
    """
    clutter = params.clutter
    im = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(im)

    def rgb(c, jitter=0.12):
        c = np.clip(np.asarray(c, np.float64) * np.exp(rng.normal(0, jitter)), 0, 255)
        return tuple(int(v) for v in c)

    def palette_colour():
        return rgb(pal_rgb[rng.integers(len(pal_rgb))], 0.1)

    if aerial:
        base = GROUND_COLOURS[rng.integers(len(GROUND_COLOURS))]
        draw.rectangle([0, 0, w, h], fill=rgb(base))
        angle = rng.uniform(0, math.pi)
        ca, sa = math.cos(angle), math.sin(angle)
        spacing = rng.uniform(6, 14)
        line_col = rgb(np.asarray(base) * rng.uniform(0.7, 1.25))
        diag = h + w
        for t in np.arange(-diag, diag, spacing):          # tiles / paving joints
            if rng.random() < 0.7:
                draw.line([(w / 2 + t * ca - diag * sa, h / 2 + t * sa + diag * ca),
                           (w / 2 + t * ca + diag * sa, h / 2 + t * sa - diag * ca)], fill=line_col, width=1)
        if rng.random() < 0.5:                              # road marking
            t = rng.uniform(-w / 2, w / 2)
            mark = (230, 230, 225) if rng.random() < 0.7 else (225, 190, 40)
            draw.line([(w / 2 + t * sa - diag * ca, h / 2 - t * ca - diag * sa),
                       (w / 2 + t * sa + diag * ca, h / 2 - t * ca + diag * sa)], fill=rgb(mark, 0.05),
                      width=int(rng.integers(2, 4)))
        for _ in range(rng.poisson(6 * clutter)):          # stains, manhole covers, car roofs, bins
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            rx, ry = rng.uniform(1.5, 0.2 * w), rng.uniform(1.5, 0.2 * w)
            col = palette_colour() if rng.random() < 0.5 else rgb(np.asarray(base) * rng.uniform(0.6, 1.3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x - rx, y - ry, x + rx, y + ry], fill=col)
    else:
        horizon = int(h * rng.uniform(0.45, 0.75))
        facade = FACADE_COLOURS[rng.integers(len(FACADE_COLOURS))]
        draw.rectangle([0, 0, w, horizon], fill=rgb(facade))
        win_w, win_h = rng.uniform(8, 20), rng.uniform(10, 24)
        gap_x, gap_y = win_w * rng.uniform(1.3, 2.2), win_h * rng.uniform(1.3, 2.0)
        win_col = rgb((60, 70, 85) if rng.random() < 0.6 else (170, 185, 200))
        for y in np.arange(rng.uniform(-win_h, 0), horizon - 4, gap_y):
            for x in np.arange(rng.uniform(-win_w, 0), w, gap_x):
                if rng.random() < 0.85:
                    draw.rectangle([x, y, x + win_w, min(y + win_h, horizon - 3)], fill=win_col)
        for _ in range(rng.poisson(1.5 * clutter)):        # shop signs, posters
            x, y = rng.uniform(0, w), rng.uniform(0, horizon)
            draw.rectangle([x, y, x + rng.uniform(8, 40), y + rng.uniform(4, 14)], fill=palette_colour())
        pave = GROUND_COLOURS[rng.integers(2)]
        draw.rectangle([0, horizon, w, h], fill=rgb(pave))
        y, step = horizon + 3.0, rng.uniform(4, 8)
        joint = rgb(np.asarray(pave) * 0.8)
        while y < h:
            draw.line([(0, y), (w, y)], fill=joint)
            y, step = y + step, step * 1.25
        draw.line([(0, horizon), (w, horizon)], fill=rgb((70, 70, 72)), width=2)
        for _ in range(rng.poisson(3 * clutter)):          # parked cars, bins, benches, passers-by
            x = rng.uniform(-10, w)
            bw, bh = rng.uniform(6, 50), rng.uniform(8, 50)
            top = horizon - bh * rng.uniform(0.3, 1.0)
            col = palette_colour() if rng.random() < 0.6 else rgb((90, 90, 92))
            shape = draw.rounded_rectangle if rng.random() < 0.6 else draw.ellipse
            shape([x, top, x + bw, top + bh], fill=col, **({"radius": 3} if shape == draw.rounded_rectangle else {}))
    out = np.asarray(im, np.float32)
    out = out + _smooth_noise(rng, h, w, 6, 18 * clutter)[..., None]
    out = out + rng.normal(0, 5 * clutter, out.shape).astype(np.float32)
    # Background slightly out of focus: the person stands out, as in a detector crop.
    blurred = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(blurred, np.float32)


def _occluder(rng: np.random.Generator, aerial: bool, h2: int, w2: int, num_frames: int) -> dict:
    """A thing that passes in front of the person for part of the tracklet (2x canvas px)."""
    kind = ("canopy" if rng.random() < 0.6 else "post") if aerial else ("pole", "car", "sign")[rng.integers(3)]
    speed = rng.uniform(0.5, 2.0) * (1 if rng.random() < 0.5 else -1) * w2 / 64
    start = rng.uniform(0.1, 0.9) * w2 - speed * num_frames * rng.uniform(0.2, 0.8)
    return {"kind": kind, "speed": speed, "start": start, "size": rng.uniform(0.25, 0.5),
            "cover": rng.uniform(0.25, 0.45)}


def _draw_occluder(draw: ImageDraw.ImageDraw, occ: dict, t: int, h2: int, w2: int) -> None:
    x = occ["start"] + occ["speed"] * t
    kind, size = occ["kind"], occ["size"]
    if kind == "pole":
        half = size * 0.25 * w2
        draw.rectangle([x - half, -1, x + half, h2 + 1], fill=OCC * 4 + 1)
        draw.rectangle([x - half * 0.4, -1, x, h2 + 1], fill=OCC * 4 + 3)
    elif kind == "car":
        top = h2 * (1 - occ["cover"])
        draw.rounded_rectangle([x - size * 2 * w2, top, x + size * 2 * w2, h2 + 4], radius=6, fill=OCC * 4 + 2)
        draw.rectangle([x - size * 1.6 * w2, top + 3, x + size * 1.6 * w2, top + h2 * 0.06 + 3], fill=OCC2 * 4 + 1)
    elif kind == "sign":
        top = h2 * (1 - occ["cover"] - 0.3)
        draw.rectangle([x - size * 0.6 * w2, top, x + size * 0.6 * w2, top + h2 * 0.25], fill=OCC2 * 4 + 2)
        draw.rectangle([x - 2, top, x + 2, h2 + 1], fill=METAL * 4 + 1)
    elif kind == "canopy":
        r = size * 0.6 * w2
        cy = h2 * occ["cover"]
        draw.ellipse([x - r, cy - r, x + r, cy + r], fill=OCC * 4 + 1)
        draw.ellipse([x - r * 0.6, cy - r * 0.7, x + r * 0.3, cy], fill=OCC * 4 + 2)
    else:
        draw.line([(x, -1), (x + w2 * 0.2, h2 * 0.7)], fill=METAL * 4 + 1, width=max(2, int(w2 * 0.06)))
        draw.ellipse([x + w2 * 0.2 - 4, h2 * 0.7 - 4, x + w2 * 0.2 + 4, h2 * 0.7 + 4], fill=OCC2 * 4 + 3)
