"""Identities: soft biometrics first, then the body, outfit and gait they drive.

`sample_identity` draws one person from its own seeded stream, so a pid looks the same whatever
the size of the set; the label-canvas materials defined here name the parts every later stage
(geometry, colour, scene) draws with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from xtfclip_lib.data.synth.params import _TAG_IDENTITY, HAIR_COLOURS, PALETTE, SKIN_TONES, SynthParams

# Materials of the label canvas; label = 4 * material + shade level (0 dark .. 3 lit).
BG, SHADOW, SKIN, HAIR, BEARD, DARK, UPPER, UPPER2, LOWER, TIGHTS, SHOE, BAG, HAT, OCC, OCC2, METAL = range(16)
NUM_MATERIALS = 16
SHADE_LEVELS = np.array([0.62, 0.80, 0.95, 1.10], np.float32)
CLOTHING_MATERIALS = (UPPER, UPPER2, LOWER, TIGHTS, SHOE, BAG, HAT)


@dataclass(frozen=True)
class Identity:
    """One person: the 15 true attribute codes and the appearance and gait they drive.

    Lengths are in metres, angles in radians, colours RGB in 0..255 before camera and lighting.
    """
    pid: int
    attributes: dict[str, int]
    height: float
    width: float                 # lateral body-volume factor (1 = medium)
    depth: float                 # front-back body-volume factor
    shoulder: float              # shoulder half-width / height
    head: float                  # head radius / height (children have larger heads)
    colours: dict[int, tuple[float, float, float]]   # material -> RGB
    pattern: str                 # "plain", "stripes", "checks", "bands"
    sleeves: str                 # "none", "short", "long"
    upper_length: float          # torso garment bottom, as a fraction of height (lower = longer)
    skirt_to: float              # skirt/dress/coat hem height / height (0 = none)
    legs: str                    # "long", "shorts", "knee", "bare"
    leg_scale: float             # leg radius factor of the garment (leggings thin, wide trousers)
    bag_side: int                # +1 left, -1 right
    period: float                # frames per gait cycle
    stride: float                # thigh swing amplitude
    arm_swing: float             # arm swing amplitude
    lean: float                  # forward torso lean


def _palette(params: SynthParams) -> tuple[np.ndarray, np.ndarray, list[str]]:
    entries = PALETTE[:params.palette_size]
    rgb = np.array([e[1] for e in entries], np.float32)
    weights = np.array([e[2] for e in entries], np.float64)
    return rgb, weights / weights.sum(), [e[0] for e in entries]


def _pick(rng: np.random.Generator, probs: Iterable[float]) -> int:
    p = np.asarray(list(probs), np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


def _shade(rng: np.random.Generator, rgb: np.ndarray, amount: float) -> tuple[float, float, float]:
    """`rgb` moved by a small per-identity offset, so one named colour differs between people."""
    out = np.clip(np.asarray(rgb, np.float64) * np.exp(rng.normal(0, amount))
                  + rng.normal(0, 255 * amount * 0.5, 3), 0, 255)
    return (float(out[0]), float(out[1]), float(out[2]))


def sample_identity(pid: int, seed: int, params: SynthParams = SynthParams()) -> Identity:
    """The identity `pid` of generator seed `seed`: attributes, body shape, outfit and gait.

    Attributes are drawn with realistic dependencies (gender -> hairstyle, beard, skirts; age ->
    height, grey hair, glasses; skin tone -> hair colour), then the appearance follows them. Only
    (seed, pid, palette_size) matter, so identity 7 looks the same whatever `num_ids` is. The
    steps draw from one stream in this order: attributes and body volume, colours, garment
    shapes, then the body proportions and gait below.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, pid, _TAG_IDENTITY]))
    a, height, width = _sample_attributes(rng)
    colours = _sample_colours(rng, a, params)
    garment = _garment_shapes(rng, a)
    female, age, child = bool(a["gender"]), a["age"], a["age"] == 0
    return Identity(
        pid=pid, attributes=a, height=height, width=width, depth=float(width ** 1.6),
        shoulder=float(rng.uniform(0.115, 0.13) * (0.94 if female else 1.04) * (1.06 if child else 1.0)),
        head=float(rng.uniform(0.060, 0.068) * (1.3 if child else 1.0)),
        colours=colours, **garment, bag_side=1 if rng.random() < 0.5 else -1,
        period=float(rng.uniform(9.0, 14.0)), stride=float(rng.uniform(0.26, 0.42) * (0.8 if age >= 6 else 1)),
        arm_swing=float(rng.uniform(0.12, 0.45)), lean=float(rng.uniform(-0.02, 0.06) + 0.06 * (age >= 7)))


def _sample_attributes(rng: np.random.Generator) -> tuple[dict[str, int], float, float]:
    """The 15 true attribute codes, with the height (m) and the lateral body-volume factor."""
    a: dict[str, int] = {}
    female = rng.random() < 0.45
    a["gender"] = int(female)
    age = _pick(rng, (0.04, 0.08, 0.20, 0.25, 0.18, 0.12, 0.08, 0.05))
    a["age"] = age
    mean_h = 1.63 if female else 1.76
    if age == 0:
        height = rng.normal(1.30, 0.10)
    elif age == 1:
        height = rng.normal(mean_h - 0.06, 0.07)
    else:
        height = rng.normal(mean_h - 0.03 * (age >= 6), 0.07)
    height = float(np.clip(height, 1.05, 2.02))
    a["height"] = int(np.searchsorted([1.60, 1.72, 1.84], height, side="right"))
    volume = _pick(rng, (0.30, 0.50, 0.20) if age >= 2 else (0.5, 0.45, 0.05))
    a["body_volume"] = volume
    width = float(rng.uniform(*((0.84, 0.93), (0.94, 1.06), (1.12, 1.28))[volume]))
    ethnicity = _pick(rng, (0.35, 0.25, 0.20, 0.20))
    a["ethnicity"] = ethnicity
    if age >= 6 and rng.random() < 0.65 or age == 5 and rng.random() < 0.25:
        hair_colour = 4
    elif rng.random() < 0.04:
        hair_colour = 5
    else:
        hair_colour = _pick(rng, ((0.25, 0.40, 0.28, 0.07, 0, 0), (0.55, 0.40, 0.04, 0.01, 0, 0),
                                  (0.85, 0.15, 0, 0, 0, 0), (0.92, 0.08, 0, 0, 0, 0))[ethnicity])
    a["hair_color"] = hair_colour
    if female:
        hairstyle = _pick(rng, (0.005, 0.15, 0.30, 0.35, 0.20))
    else:
        hairstyle = _pick(rng, (0.06 + 0.04 * max(age - 3, 0), 0.70, 0.15, 0.04, 0.03))
    a["hairstyle"] = hairstyle
    adult_male = not female and age >= 2
    beard = int(adult_male and rng.random() < 0.22)
    a["beard"] = beard
    a["moustache"] = int(adult_male and rng.random() < (0.8 if beard else 0.1))
    a["glasses"] = _pick(rng, (0.72 - 0.04 * age, 0.18 + 0.04 * age, 0.10))
    head_acc = _pick(rng, (0.72, 0.14, 0.07, 0.07))
    a["head_accessories"] = head_acc
    upper = _pick(rng, (0.20, 0.12, 0.07, 0.06, 0.10, 0.08, 0.14, 0.07, 0.05,
                        0.06 if female else 0.0, 0.04, 0.01))
    a["upper_clothing"] = upper
    if upper == 9:
        lower = 8
    elif female:
        lower = _pick(rng, (0.16, 0.26, 0.06, 0.05, 0.10, 0.08, 0.20, 0.09, 0))
    else:
        lower = _pick(rng, (0.34, 0.34, 0.10, 0.08, 0, 0, 0.02, 0.12, 0))
    a["lower_clothing"] = lower
    feet = _pick(rng, (0.42, 0.18, 0.14, 0.08, 0.08 if female else 0.0, 0.04))
    a["feet"] = feet
    accessory = _pick(rng, (0.36, 0.20, 0.12, 0.10 if female else 0.03, 0.08, 0.05, 0.04, 0.05))
    a["accessories"] = accessory
    return a, height, width


def _sample_colours(rng: np.random.Generator, a: dict[str, int], params: SynthParams
                    ) -> dict[int, tuple[float, float, float]]:
    """Material -> RGB of skin, hair and every garment and carried item, from the palette."""
    pal_rgb, pal_p, pal_names = _palette(params)
    upper, lower, accessory = a["upper_clothing"], a["lower_clothing"], a["accessories"]

    def colour(probs=None) -> tuple[float, float, float]:
        k = int(rng.choice(len(pal_p), p=pal_p if probs is None else probs))
        return _shade(rng, pal_rgb[k], params.identity_shade)

    def colour_from(names: tuple[str, ...]) -> tuple[float, float, float]:
        keep = np.array([n in names for n in pal_names], np.float64) * pal_p
        return colour(keep / keep.sum() if keep.sum() > 0 else None)

    skin = _shade(rng, np.array(SKIN_TONES[a["ethnicity"]]), 0.05)
    hair = _shade(rng, np.array(HAIR_COLOURS[a["hair_color"]]), 0.08)
    colours = {SKIN: skin, HAIR: hair, BEARD: tuple(0.8 * c for c in hair), DARK: (22.0, 20.0, 22.0),
               METAL: (150.0, 152.0, 158.0), UPPER: colour(), LOWER: colour()}
    if upper == 11:
        colours[UPPER] = _shade(rng, np.array((236, 210, 40) if rng.random() < 0.6 else (236, 120, 30)),
                                params.identity_shade)
    if upper == 10:
        colours[UPPER] = colour_from(("black", "grey", "navy", "brown", "beige"))
    if lower == 1:
        colours[LOWER] = colour_from(("navy", "blue", "light blue", "black", "grey"))
    if upper in (9,) or lower == 8:
        colours[LOWER] = colours[UPPER]
    inner_light = upper == 10 or rng.random() < 0.5
    colours[UPPER2] = (colour_from(("white", "beige", "light blue")) if inner_light
                       else colour_from(("black", "navy", "grey")))
    if upper == 11:
        colours[UPPER2] = (225.0, 225.0, 225.0)
    colours[TIGHTS] = skin if rng.random() < 0.5 else colour_from(("black", "grey", "navy"))
    colours[SHOE] = (colour_from(("black", "white", "brown", "grey")) if rng.random() < 0.85
                     else colour())
    colours[BAG] = (colour_from(("black", "brown", "grey", "navy")) if rng.random() < 0.6
                    else colour())
    if accessory == 4:
        colours[BAG] = _shade(rng, np.array((225, 222, 210)), 0.08)
    if accessory == 7:
        colours[BAG] = _shade(rng, np.array((170, 130, 85)), 0.08)
    colours[HAT] = colour()
    return colours


def _garment_shapes(rng: np.random.Generator, a: dict[str, int]) -> dict[str, object]:
    """Pattern, sleeves, garment lengths and leg look of the outfit (the `Identity` fields)."""
    upper, lower = a["upper_clothing"], a["lower_clothing"]
    pattern = {2: "stripes", 3: "checks", 11: "bands", 6: "open", 10: "open"}.get(upper, "plain")
    sleeves = "none" if upper in (8, 9) and (upper == 8 or rng.random() < 0.5) else (
        "short" if upper in (0, 2, 9) else "long")
    upper_length = {6: 0.47, 7: 0.50, 10: 0.46}.get(upper, 0.50)
    skirt_to = {4: 0.38, 5: 0.06, 8: 0.30}.get(lower, 0.0)
    if upper == 7:
        skirt_to = 0.30
    legs = {2: "shorts", 3: "knee", 4: "bare", 5: "bare", 8: "bare"}.get(lower, "long")
    leg_scale = {6: 0.82, 7: 1.22, 0: 1.05, 1: 1.0}.get(lower, 1.0)
    return {"pattern": pattern, "sleeves": sleeves, "upper_length": upper_length, "skirt_to": skirt_to,
            "legs": legs, "leg_scale": leg_scale}
