"""Rasterising a figure: primitives into a 2x-supersampled label canvas, the shaded head patch.

Labels are 4 * material + shade level; `colour` turns them into RGB. `_figure_bbox` gives the
extent a detector box is fitted to.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from xtfclip_lib.data.synth.identities import BEARD, DARK, HAIR, HAT, SHADOW, SKIN, Identity

def _head_patch(idn: Identity, C: np.ndarray, cx: float, cy: float, R: float,
                light: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Label patch of the head sphere: skin, hair by style, hood/cap crown, face details, shading.

    Each pixel's sphere normal is expressed in the body frame (forward, left, up) so the hairline,
    eyes, glasses, beard and moustache sit where they belong for any view; shade levels follow a
    Lambertian light. Returns (x0, y0, labels uint8 (h, w), mask bool (h, w)).
    """
    x0, y0 = int(math.floor(cx - R)), int(math.floor(cy - R))
    x1, y1 = int(math.ceil(cx + R)) + 1, int(math.ceil(cy + R)) + 1
    xs = (np.arange(x0, x1) + 0.5 - cx) / R
    ys = -(np.arange(y0, y1) + 0.5 - cy) / R
    qx, qy = np.meshgrid(xs, ys)
    rr = qx * qx + qy * qy
    inside = rr <= 1.0
    qz = np.sqrt(np.clip(1.0 - rr, 0.0, 1.0))
    nf = qx * C[0, 0] + qy * C[0, 1] - qz * C[0, 2]
    nl = qx * C[1, 0] + qy * C[1, 1] - qz * C[1, 2]
    nz = qx * C[2, 0] + qy * C[2, 1] - qz * C[2, 2]
    a = idn.attributes
    mat = np.full(qx.shape, SKIN, np.uint8)
    g = nz - 0.55 * nf
    style, hat = a["hairstyle"], a["head_accessories"]
    if style == 0:
        hair = (g > -0.05) & (g < 0.12) & (nz < 0.35) & (a["age"] >= 4)
    else:
        hair = g > {1: 0.12, 2: -0.12, 3: -0.3, 4: 0.02}[style]
        if style == 3:
            hair |= nf < -0.2
    mat[hair] = HAIR
    face = (nf > 0.45) & (nz < 0.55) & (nz > -0.75)
    fx = face & (nf > 0.7)
    if a["beard"]:
        mat[face & (nz < -0.25) & (nf > 0.1)] = BEARD
    if a["moustache"]:
        mat[fx & (nz > -0.32) & (nz < -0.12) & (np.abs(nl) < 0.4)] = BEARD
    eye_band = fx & (nz > 0.05) & (nz < 0.28)
    if a["glasses"] == 2:
        mat[eye_band & (np.abs(nl) < 0.62)] = DARK
    else:
        mat[eye_band & (np.abs(np.abs(nl) - 0.33) < 0.1)] = DARK
        if a["glasses"] == 1:
            mat[fx & (np.abs(nz - 0.16) < 0.04) & (np.abs(nl) < 0.62)] = DARK
    if hat == 3:
        mat[~face | (nz > 0.45)] = HAT
    elif hat in (1, 2):
        mat[nz - 0.2 * nf > 0.4] = HAT
    lum = qx * light[0] + qy * light[1] + qz * light[2]
    shade = (1 + (lum > 0.15) + (lum > 0.6)).astype(np.uint8) - (rr > 0.82)
    return x0, y0, (mat * 4 + shade).astype(np.uint8), inside


def _rasterise(items, head_info, idn: Identity, scale: float, ox: float, oy: float,
               size_hw: tuple[int, int], light: np.ndarray) -> Image.Image:
    """Draw primitives into an 'L' label image of `size_hw` (px = ox + scale*x, py = oy - scale*y)."""
    im = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw = ImageDraw.Draw(im)

    def px(p):
        return (ox + scale * p[0], oy - scale * p[1])

    for _, _, kind, payload in items:
        if kind == "cap":
            p0, p1, radius, label = payload
            a, b, r = px(p0), px(p1), max(scale * radius, 0.6)
            draw.line([a, b], fill=label, width=max(1, int(round(2 * r))))
            draw.ellipse([a[0] - r, a[1] - r, a[0] + r, a[1] + r], fill=label)
            draw.ellipse([b[0] - r, b[1] - r, b[0] + r, b[1] + r], fill=label)
        elif kind == "polys":
            polys, label = payload
            for pts in polys:
                xy = np.empty((len(pts), 2))
                xy[:, 0] = ox + scale * pts[:, 0]
                xy[:, 1] = oy - scale * pts[:, 1]
                draw.polygon(xy.ravel().tolist(), fill=label)
        elif kind == "ball":
            c, radius, label = payload
            (x, y), r = px(c), max(scale * radius, 0.6)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=label)
        elif kind == "head":
            c, radius = payload
            x, y = px(c)
            x0, y0, labels, mask = _head_patch(idn, head_info["C"], x, y, max(scale * radius, 1.0), light)
            im.paste(Image.fromarray(labels, "L"), (x0, y0), Image.fromarray(mask.astype(np.uint8) * 255, "L"))
    return im


def _figure_bbox(items) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) in screen metres of everything but the shadow."""
    xs, ys = [], []
    for _, _, kind, payload in items:
        if kind == "cap":
            p0, p1, r, label = payload
            if label // 4 == SHADOW:
                continue
            xs += [p0[0] - r, p0[0] + r, p1[0] - r, p1[0] + r]
            ys += [p0[1] - r, p0[1] + r, p1[1] - r, p1[1] + r]
        elif kind == "polys":
            polys, label = payload
            if label // 4 == SHADOW:
                continue
            for pts in polys:
                xs += [pts[:, 0].min(), pts[:, 0].max()]
                ys += [pts[:, 1].min(), pts[:, 1].max()]
        else:
            c, r = payload[0], payload[1]
            xs += [c[0] - r, c[0] + r]
            ys += [c[1] - r, c[1] + r]
    return min(xs), max(xs), min(ys), max(ys)
