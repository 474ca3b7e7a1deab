"""One dressed person for one view: the posed body as depth-sorted primitives of a `_Figure`.

`_build_figure` adds, in a fixed order, the ground shadow, the legs and footwear, the pelvis,
skirt and torso, the carried item, the arms and the head with its hair and hat. The order
matters beyond depth: primitives of equal depth keep the order they were added in.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from xtfclip_lib.data.synth.geometry import _CIRCLE12, _camera_matrix, _Figure, _pose
from xtfclip_lib.data.synth.identities import (BAG, HAIR, HAT, LOWER, METAL, SHADOW, SHOE, SKIN, TIGHTS, UPPER,
                                               UPPER2, Identity)


class _Torso(NamedTuple):
    """Where the torso is, for the parts attached to it (metres, local coordinates; keys)."""
    ground: float        # the ground's height in the joints' frame
    zh: float            # hip height above the ground
    zs: float            # shoulder height above the ground
    a_t: float           # torso lateral semi-axis
    b_t: float           # torso forward semi-axis
    cx: float            # torso centre, forward
    torso_d: float       # the torso's depth on screen
    body_key: float      # depth key of the pelvis (the torso's parts are just in front of it)
    after_torso: float   # depth key of what lies on the torso (straps, arms in front)


def _build_figure(idn: Identity, phase: float, heading: float, elevation: float,
                  sun: tuple[float, float], aerial: bool) -> tuple[list, dict]:
    """Depth-sorted primitives of `idn` and the head description for the shaded head patch."""
    C = _camera_matrix(heading, elevation)
    fig = _Figure(idn, C)
    j = _pose(idn, phase, idn.attributes["accessories"])
    _add_shadow(fig, idn.height, sun, aerial)
    legs_key, leg_r, bare_leg = _add_legs(fig, idn, j)
    torso = _add_torso(fig, idn, j, legs_key, leg_r, bare_leg)
    _add_carried_item(fig, idn, j, torso)
    _add_arms(fig, idn, j, torso)
    r = _add_head(fig, idn, j, torso)
    fig.items.sort(key=lambda item: (-item[0], item[1]))
    head_info = {"C": fig.C, "radius": r}
    return fig.items, head_info


def _add_shadow(fig: _Figure, H: float, sun: tuple[float, float], aerial: bool) -> None:
    """Shadow on the ground first (always farthest): under the feet, stretched away from the sun."""
    sdx, sdy = sun
    stretch = 0.3 if aerial else 0.12
    ring = np.column_stack([0.18 * H * _CIRCLE12[:, 0] + stretch * H * (1 + _CIRCLE12[:, 0]) * sdx * 0.5,
                            0.16 * H * _CIRCLE12[:, 1] + stretch * H * (1 + _CIRCLE12[:, 0]) * sdy * 0.5,
                            np.zeros(12)])
    fig.add(1e9, "polys", ((fig.proj(ring)[:, :2],), SHADOW * 4))


def _add_legs(fig: _Figure, idn: Identity, j: dict) -> tuple[list[float], float, int]:
    """Both legs with garment, boots and feet; returns (their depths, thigh radius, bare-leg material)."""
    H = idn.height
    legs_key = []
    leg_r = 0.042 * H * idn.width ** 0.7 * idn.leg_scale
    shin_r = 0.032 * H * idn.width ** 0.6 * idn.leg_scale
    bare_leg = TIGHTS if idn.legs == "bare" else SKIN
    feet = idn.attributes["feet"]
    for side in (1, -1):
        hip, knee, ankle = j[f"hip{side}"], j[f"knee{side}"], j[f"ankle{side}"]
        d = fig.proj([hip, ankle])[:, 2].mean()
        legs_key.append(d)
        far = d > fig.proj([j["neck"]])[0, 2]
        shade = 1 if far else 2
        thigh_mat = LOWER if idn.legs != "bare" else bare_leg
        shin_mat = LOWER if idn.legs == "long" else bare_leg
        fig.capsule(ankle, knee, shin_r, shin_mat, shade, key=d)
        if feet == 2:                                   # boots cover the lower shin
            fig.capsule(ankle, ankle + 0.4 * (knee - ankle), shin_r * 1.12, SHOE, shade, key=d - 1e-7)
        fig.capsule(knee, hip, leg_r, thigh_mat, shade, key=d - 2e-7)
        if idn.legs == "shorts":
            fig.capsule(knee, hip, leg_r, SKIN, shade, key=d - 2.5e-7)
            fig.capsule(hip + 0.6 * (knee - hip), hip, leg_r * 1.12, LOWER, shade, key=d - 3e-7)
        elif idn.legs == "knee":
            fig.capsule(knee + 0.1 * (hip - knee), hip, leg_r * 1.1, LOWER, shade, key=d - 3e-7)
        foot_mat, foot_r = (SKIN, 0.02 * H) if feet in (3, 5) else (SHOE, 0.024 * H * (0.8 if feet == 4 else 1))
        fig.capsule(j[f"heel{side}"], j[f"toe{side}"], foot_r, foot_mat, shade, key=d - 4e-7)
        if feet in (3, 5):                              # sandals/slippers: a sole and a strap
            fig.capsule(j[f"heel{side}"] - np.array([0, 0, 0.01 * H]), j[f"toe{side}"] - np.array([0, 0, 0.01 * H]),
                        0.012 * H, SHOE, shade, key=d - 5e-7)
    return legs_key, leg_r, bare_leg


def _add_torso(fig: _Figure, idn: Identity, j: dict, legs_key: list[float], leg_r: float,
               bare_leg: int) -> _Torso:
    """Pelvis in the lower garment, then skirt / dress / coat hem, then the torso on top."""
    H = idn.height
    zh, zs = 0.52 * H, 0.815 * H
    ground = j["neck"][2] - zs
    a_t = idn.shoulder * H * idn.width ** 0.5 * 0.92
    b_t = 0.078 * H * idn.depth
    cx = j["neck"][0] * 0.5
    torso_d = fig.proj([[cx, 0, ground + 0.65 * H]])[0, 2]
    body_key = min(min(legs_key), torso_d) - 1e-3
    fig.prism(cx * 0.5, 0, ground + zh - 0.075 * H, ground + zh + 0.03 * H, 0.058 * H * idn.width + leg_r,
              b_t * 0.95, 0.058 * H * idn.width + leg_r, b_t * 0.95,
              LOWER if idn.legs != "bare" or idn.skirt_to else bare_leg, 2, key=body_key)
    skirt_mat = UPPER if idn.attributes["upper_clothing"] in (7, 9) else LOWER
    if idn.skirt_to:
        flare = 1.35 if idn.attributes["upper_clothing"] != 7 else 1.12
        fig.prism(cx * 0.5, 0, ground + idn.skirt_to * H, ground + zh + 0.04 * H,
                  (0.058 * H * idn.width + leg_r) * flare, b_t * 1.1 * flare,
                  0.058 * H * idn.width + leg_r, b_t, skirt_mat, 2, key=body_key - 2e-4)
    torso_bottom = ground + idn.upper_length * H
    fig.prism(cx, 0, torso_bottom, ground + zs + 0.012 * H, a_t * 0.93, b_t, a_t, b_t * 0.95,
                        UPPER, 2, key=body_key - 4e-4, top_shade=3)
    if idn.pattern == "open" and not fig.back_visible:   # open jacket: the inner shirt in front
        z0, z1 = torso_bottom + 0.01 * H, ground + zs - 0.02 * H
        fig.quad([[b_t * 0.99 + cx, 0.28 * a_t, z0], [b_t * 0.99 + cx, -0.28 * a_t, z0],
                  [b_t * 0.96 + cx, -0.22 * a_t, z1], [b_t * 0.96 + cx, 0.22 * a_t, z1]],
                 UPPER2, 2, key=body_key - 5e-4)
    if idn.attributes["upper_clothing"] == 4:            # hoodie: the hood lies on the upper back
        key = body_key - 6e-4 if fig.back_visible else body_key + 1e-4
        fig.ball([cx - b_t * 0.7, 0, ground + zs + 0.015 * H], 0.05 * H, UPPER, 1, key=key)
    return _Torso(ground, zh, zs, a_t, b_t, cx, torso_d, body_key, body_key - 7e-4)


def _add_carried_item(fig: _Figure, idn: Identity, j: dict, torso: _Torso) -> None:
    """The carried item (accessories 1-7): on the back, at the side, in the hand or in front."""
    H, acc, side = idn.height, idn.attributes["accessories"], idn.bag_side
    ground, zh, zs, a_t, b_t, cx, _, body_key, after_torso = torso
    if acc == 1:                                          # backpack
        key = after_torso if fig.back_visible else body_key + 2e-4
        fig.box([cx - b_t - 0.045 * H, 0, ground + zs - 0.14 * H], [0.045 * H, a_t * 0.72, 0.12 * H], BAG, 2, key=key)
        if not fig.back_visible:
            for s in (1, -1):
                fig.capsule([cx + b_t, s * a_t * 0.45, ground + zs + 0.005 * H],
                            [cx + b_t * 0.9, s * a_t * 0.6, ground + zs - 0.17 * H], 0.012 * H, BAG, 1, key=after_torso)
    elif acc == 2:                                        # shoulder bag with a strap across the chest
        fig.box([cx, side * (a_t + 0.03 * H), ground + zh + 0.03 * H], [0.065 * H, 0.025 * H, 0.055 * H], BAG, 2)
        x = b_t if not fig.back_visible else -b_t
        fig.capsule([cx + x, -side * a_t * 0.6, ground + zs], [cx + x * 0.9, side * a_t * 0.9, ground + zh + 0.09 * H],
                    0.01 * H, BAG, 1, key=after_torso)
    elif acc in (3, 4):                                   # handbag / shopping bag at the hand
        w = j[f"wrist{side}"]
        half = [0.05 * H, 0.02 * H, 0.04 * H] if acc == 3 else [0.06 * H, 0.016 * H, 0.085 * H]
        fig.box(w + np.array([0, 0, -half[2] - 0.01 * H]), half, BAG, 2)
    elif acc == 5:                                        # suitcase pulled behind
        w = j[f"wrist{side}"]
        centre = np.array([w[0] - 0.16 * H, side * (a_t + 0.04 * H), ground + 0.17 * H])
        fig.box(centre, [0.075 * H, 0.05 * H, 0.16 * H], BAG, 2)
        fig.capsule(w, centre + np.array([0.02 * H, 0, 0.16 * H]), 0.008 * H, METAL, 1)
    elif acc == 6:                                        # closed umbrella used as a stick
        w = j[f"wrist{side}"]
        fig.capsule(w, np.array([w[0] + 0.08 * H, w[1], ground + 0.005 * H]), 0.014 * H, BAG, 1)
    elif acc == 7:                                        # box carried in front
        fig.box([cx + b_t + 0.07 * H, 0, ground + zh + 0.16 * H], [0.07 * H, 0.12 * H, 0.08 * H], BAG, 2)


def _add_arms(fig: _Figure, idn: Identity, j: dict, torso: _Torso) -> None:
    """Arms (sleeves by garment type) at their own depth."""
    H = idn.height
    arm_r, fore_r = 0.029 * H * idn.width ** 0.6, 0.024 * H * idn.width ** 0.5
    for s in (1, -1):
        sh, el, wr, hand = j[f"shoulder{s}"], j[f"elbow{s}"], j[f"wrist{s}"], j[f"hand{s}"]
        d = fig.proj([sh, wr])[:, 2].mean()
        key = min(d, torso.after_torso - 1e-4) if d < torso.torso_d else d
        shade = 1 if d > torso.torso_d else 2
        fore_mat = UPPER if idn.sleeves == "long" else SKIN
        up_mat = SKIN if idn.sleeves == "none" else UPPER
        fig.capsule(el, wr, fore_r, fore_mat, shade, key=key)
        fig.ball(hand, 0.022 * H, SKIN, shade, key=key - 1e-7)
        fig.capsule(sh, el, arm_r, SKIN if idn.sleeves == "short" else up_mat, shade, key=key - 2e-7)
        if idn.sleeves == "short":
            fig.capsule(sh, sh + 0.5 * (el - sh), arm_r * 1.15, UPPER, shade, key=key - 3e-7)


def _add_head(fig: _Figure, idn: Identity, j: dict, torso: _Torso) -> float:
    """Neck, long hair / ponytail, head (a shaded patch), hats; returns the head radius (m)."""
    H = idn.height
    ground, zs, b_t, cx, after_torso = torso.ground, torso.zs, torso.b_t, torso.cx, torso.after_torso
    r = idn.head * H
    head = j["head"]
    head_q = fig.proj([head])[0]
    head_key = min(head_q[2], after_torso - 2e-3)
    fig.capsule(j["neck"], head, 0.3 * r, SKIN, 1, key=head_key + 1e-5)
    style, hat = idn.attributes["hairstyle"], idn.attributes["head_accessories"]
    if style == 3 and hat != 3:
        key = head_key + 2e-5 if not fig.back_visible else head_key - 1e-4
        fig.capsule(head + np.array([-0.45 * r, 0, -0.1 * r]), [cx - b_t * 0.9, 0, ground + zs - 0.04 * H],
                    0.75 * r, HAIR, 1, key=key)
    if style == 4 and hat != 3:
        key = head_key + 2e-5 if not fig.back_visible else head_key - 1e-4
        fig.ball(head + np.array([-1.0 * r, 0, 0.25 * r]), 0.42 * r, HAIR, 1, key=key)
    fig.add(head_key, "head", (head_q[:2], r))
    if hat == 1:                                          # cap: brim in front of the crown
        brim = np.column_stack([head[0] + 0.55 * r + 0.6 * r * _CIRCLE12[:, 0],
                                0.85 * r * _CIRCLE12[:, 1], np.full(12, head[2] + 0.3 * r)])
        q = fig.proj(brim)
        fig.add(q[:, 2].mean(), "polys", ((q[:, :2],), HAT * 4 + 1))
    elif hat == 2:                                        # wide-brim hat: brim then crown
        fig.prism(head[0], 0, head[2] + 0.28 * r, head[2] + 0.34 * r, 1.9 * r, 1.9 * r, 1.9 * r, 1.9 * r,
                  HAT, 2, key=head_key - 1e-4, top_shade=3)
        fig.prism(head[0], 0, head[2] + 0.3 * r, head[2] + 1.15 * r, 1.02 * r, 1.02 * r, 0.95 * r, 0.95 * r,
                  HAT, 2, key=head_key - 2e-4, top_shade=3)
    return r
