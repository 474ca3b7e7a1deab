"""Geometry: a posed body in local coordinates (x forward, y left, z up), projected orthographically.

`_camera_matrix` maps body coordinates to the screen, `_Figure` collects the depth-sorted
primitives (capsules, balls, elliptic frusta, boxes) of one view and `_pose` places the joints
at a gait phase; `body` dresses the pose and `raster` draws it.
"""
from __future__ import annotations

import math

import numpy as np

from xtfclip_lib.data.synth.identities import Identity

_CIRCLE12 = np.stack([np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                      np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], 1)


def _camera_matrix(heading: float, elevation: float) -> np.ndarray:
    """(3, 3) map from local body coordinates to (screen x right, screen y up, depth away).

    The camera looks along world +X tilted down by `elevation`; the person walks at `heading`
    (0 = away from the camera, pi = towards it, +-pi/2 = sideways).
    """
    ch, sh, ce, se = math.cos(heading), math.sin(heading), math.cos(elevation), math.sin(elevation)
    local = np.array([[ch, sh, 0.0], [-sh, ch, 0.0], [0.0, 0.0, 1.0]])   # rows f, l, z in world
    screen = np.array([[0.0, se, ce], [-1.0, 0.0, 0.0], [0.0, ce, -se]])   # columns r, u, v
    return local @ screen


class _Figure:
    """Builds the depth-sorted primitives of one posed person for one view.

    Primitives are (key, kind, payload) with payload in screen metres; larger key = farther, drawn
    first (painter's algorithm). Attached parts get keys relative to the body so that, e.g., the
    torso always covers the tops of the legs and a backpack shows only from behind.
    """

    def __init__(self, idn: Identity, C: np.ndarray):
        self.idn, self.C = idn, C
        self.items: list[tuple[float, int, str, tuple]] = []
        self.back_visible = C[0, 2] > 0           # forward axis points away from the camera

    def proj(self, pts) -> np.ndarray:
        return np.asarray(pts, np.float64) @ self.C

    def add(self, key, kind, payload):
        self.items.append((key, len(self.items), kind, payload))

    def capsule(self, p0, p1, radius, mat, shade, key=None):
        q = self.proj([p0, p1])
        self.add(q[:, 2].mean() if key is None else key, "cap", (q[0, :2], q[1, :2], radius, mat * 4 + shade))

    def ball(self, centre, radius, mat, shade, key=None):
        q = self.proj([centre])[0]
        self.add(q[2] if key is None else key, "ball", (q[:2], radius, mat * 4 + shade))

    def _vertical_solid(self, ring0, ring1, label, key, top_label):
        """Silhouette of a solid between two horizontal convex sections (same vertex order).

        A vertical offset projects to a vertical screen offset, so the hull of the two sections is
        both sections plus the quad joining their leftmost and rightmost points (exact for a prism,
        close for a frustum); three PIL polygons are much cheaper than a hull per frame.
        """
        q = self.proj(np.vstack([ring0, ring1]))
        n = len(ring0)
        key = q[:, 2].mean() if key is None else key
        s0, s1 = q[:n, :2], q[n:, :2]
        l0, r0, l1, r1 = s0[:, 0].argmin(), s0[:, 0].argmax(), s1[:, 0].argmin(), s1[:, 0].argmax()
        quad = np.array([s0[l0], s0[r0], s1[r1], s1[l1]])
        self.add(key, "polys", ((s0, s1, quad), label))
        if top_label is not None and self.C[2, 1] < 0.97:    # top face seen from above
            self.add(key - 1e-6, "polys", ((s1,), top_label))

    def prism(self, cx, cy, z0, z1, a0, b0, a1, b1, mat, shade, key=None, top_shade=None):
        """Elliptic frustum: cross-sections with semi-axes b (forward) x a (lateral) at z0 and z1."""
        ring0 = np.column_stack([cx + b0 * _CIRCLE12[:, 0], cy + a0 * _CIRCLE12[:, 1], np.full(12, z0)])
        ring1 = np.column_stack([cx + b1 * _CIRCLE12[:, 0], cy + a1 * _CIRCLE12[:, 1], np.full(12, z1)])
        self._vertical_solid(ring0, ring1, mat * 4 + shade, key,
                             None if top_shade is None else mat * 4 + top_shade)

    def box(self, centre, half, mat, shade, key=None):
        rect = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64) * np.asarray(half[:2])
        cx, cy, cz = centre
        ring0 = np.column_stack([cx + rect[:, 0], cy + rect[:, 1], np.full(4, cz - half[2])])
        ring1 = np.column_stack([cx + rect[:, 0], cy + rect[:, 1], np.full(4, cz + half[2])])
        self._vertical_solid(ring0, ring1, mat * 4 + shade, key, mat * 4 + min(shade + 1, 3))

    def quad(self, pts, mat, shade, key):
        self.add(key, "polys", ((self.proj(pts)[:, :2],), mat * 4 + shade))


def _pose(idn: Identity, phase: float, accessory: int) -> dict[str, np.ndarray]:
    """Joint positions (local coordinates, metres) at gait `phase`; feet on the ground (z = 0)."""
    H = idn.height
    zh, zs = 0.52 * H, 0.815 * H
    hw = 0.055 * H * idn.width
    l1 = l2 = 0.2425 * H
    j: dict[str, np.ndarray] = {}
    for side, ph in ((1, phase), (-1, phase + math.pi)):
        a = idn.stride * math.sin(ph)
        k = 0.08 + 0.95 * max(0.0, math.cos(ph)) ** 1.5
        hip = np.array([0.0, side * hw, zh])
        knee = hip + l1 * np.array([math.sin(a), 0.0, -math.cos(a)])
        b = a - k
        ankle = knee + l2 * np.array([math.sin(b), 0.0, -math.cos(b)])
        pitch = 0.6 * max(0.0, -math.sin(ph)) * max(0.0, math.cos(ph - 0.4))   # heel lifts at toe-off
        foot = np.array([math.cos(pitch), 0.0, math.sin(pitch)])
        j[f"hip{side}"], j[f"knee{side}"], j[f"ankle{side}"] = hip, knee, ankle
        j[f"heel{side}"] = ankle - 0.035 * H * foot - np.array([0, 0, 0.018 * H])
        j[f"toe{side}"] = ankle + 0.10 * H * foot - np.array([0, 0, 0.022 * H])
    ground = min(j["heel1"][2], j["heel-1"][2], j["toe1"][2], j["toe-1"][2]) - 0.02 * H
    lean = idn.lean
    sx = (zs - zh) * math.sin(lean)
    for side, ph in ((1, phase + math.pi), (-1, phase)):
        sw = idn.shoulder * H * idn.width ** 0.5
        shoulder = np.array([sx, side * sw, zs])
        alpha = -idn.arm_swing * math.sin(ph + math.pi)
        elbow_flex = 0.2 + 0.3 * max(0.0, math.sin(alpha) * 2)
        holding = accessory in (3, 4, 6) and side == idn.bag_side
        if holding:
            alpha *= 0.35
        if accessory == 5 and side == idn.bag_side:
            alpha, elbow_flex = -0.35, 0.05
        if accessory == 7:
            alpha, elbow_flex = 0.35, 1.15
        abd = 0.10 + 0.04 * (idn.width - 1)
        up_dir = np.array([math.sin(alpha), side * abd, -math.cos(alpha)])
        elbow = shoulder + 0.17 * H * up_dir / np.linalg.norm(up_dir)
        fa = alpha + elbow_flex
        lo_dir = np.array([math.sin(fa), side * abd * 0.5, -math.cos(fa)])
        wrist = elbow + 0.155 * H * lo_dir / np.linalg.norm(lo_dir)
        j[f"shoulder{side}"], j[f"elbow{side}"], j[f"wrist{side}"] = shoulder, elbow, wrist
        j[f"hand{side}"] = wrist + 0.035 * H * lo_dir / np.linalg.norm(lo_dir)
    r = idn.head * H
    j["neck"] = np.array([sx, 0.0, zs])
    j["head"] = np.array([sx + 0.012 * H, 0.0, H - r])
    for name in j:
        j[name] = j[name] - np.array([0.0, 0.0, ground])
    return j
