"""One tracklet: a person walking past one camera, rendered frame by frame.

`render_tracklet` draws, from the tracklet's own stream and in this order, the view (`_draw_view`),
the detector crop (`_fit_crop`), the scene (`_draw_scene`: background, lighting, clothing jitter,
neighbour, occluder, noise bank) and then, per frame, the detection jitter and the noise window.
Each step is a function so that the order of the draws reads top to bottom.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from xtfclip_lib.data.synth.body import _build_figure
from xtfclip_lib.data.synth.colour import _apply, _apply_pattern, _camera_transform, _colourise, _label_lut
from xtfclip_lib.data.synth.geometry import _camera_matrix
from xtfclip_lib.data.synth.identities import OCC, OCC2, SHADOW, UPPER, Identity, _palette, sample_identity
from xtfclip_lib.data.synth.params import CAMERAS, CameraSpec, SynthParams
from xtfclip_lib.data.synth.raster import _figure_bbox, _rasterise
from xtfclip_lib.data.synth.scene import _background, _draw_occluder, _occluder


class _View(NamedTuple):
    """The per-tracklet view: camera elevation, walk, gait, sun and light, crop height and blur."""
    num_frames: int
    elevation: float
    heading0: float
    turn: float          # heading change over the tracklet
    period: float        # frames per gait cycle in this tracklet
    phase0: float
    sun: tuple[float, float]
    light: np.ndarray
    final_h: int         # crop height after the aerial upsampling
    h: int               # rendered height (aerial: at native resolution)
    blur: float

    def heading(self, t):
        return self.heading0 + self.turn * t / max(self.num_frames - 1, 1)

    def phase(self, t):
        return self.phase0 + 2 * math.pi * t / self.period


class _Crop(NamedTuple):
    """The detector box: screen metres to px (px = ox + scale*x, py = oy - scale*y) and its width."""
    scale: float
    w: int
    ox: float
    oy: float


class _Scene(NamedTuple):
    """What stays fixed behind and over the figure for the whole tracklet."""
    pad: int
    scroll: float            # background shift per frame, px
    scroll_base: int
    bg: np.ndarray           # background after the camera transform
    lut: np.ndarray          # label -> colour of this tracklet
    occ: dict | None         # occluder, if any
    torso_period: float      # pattern period on the upper garment, 2x px
    out_h: int
    out_w: int
    bank: np.ndarray         # sensor-noise bank


def render_tracklet(idn: Identity, cam: int, num_frames: int, rng: np.random.Generator,
                    params: SynthParams = SynthParams()) -> list[np.ndarray]:
    """Frames (num_frames of (H, W, 3) uint8, one size per tracklet) of `idn` walking past camera `cam`.

    Per tracklet: view elevation (camera range), walking direction and drift, gait phase and
    cadence, crop size (aerial: from a drawn altitude), background, lighting, clothing jitter,
    optional occluder and neighbour. Per frame: pose, detection jitter, background scroll, noise.
    """
    if cam not in CAMERAS:
        raise ValueError(f"camera {cam!r} is not one of {sorted(CAMERAS)}")
    spec = CAMERAS[cam]
    aerial = spec.platform == "aerial"
    view = _draw_view(idn, spec, num_frames, rng, params, aerial)
    crop = _fit_crop(idn, view, rng, aerial)
    scene = _draw_scene(idn, cam, view, crop, rng, params, aerial)
    jx = jy = 0.0
    frames = []
    for t in range(num_frames):
        jx = float(np.clip(0.8 * jx + rng.normal(0, params.jitter_px), -scene.pad + 1, scene.pad - 1))
        jy = float(np.clip(0.8 * jy + rng.normal(0, params.jitter_px * 0.6), -scene.pad + 1, scene.pad - 1))
        frames.append(_render_frame(idn, t, jx, jy, view, crop, scene, rng, aerial))
    return frames


def _draw_view(idn: Identity, spec: CameraSpec, num_frames: int, rng: np.random.Generator,
               params: SynthParams, aerial: bool) -> _View:
    """Elevation, walk, gait, sun, light, then altitude (crop and render size) and blur."""
    elevation = math.radians(rng.uniform(*spec.elevation_deg))
    heading0 = rng.uniform(0, 2 * math.pi)
    turn = rng.normal(0, 0.25)
    period = idn.period * rng.uniform(0.9, 1.1)
    phase0 = rng.uniform(0, 2 * math.pi)
    sun_angle = rng.uniform(0, 2 * math.pi)
    sun = (math.cos(sun_angle), math.sin(sun_angle))
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(0.4, 0.8), 0.7])
    light /= np.linalg.norm(light)
    altitude = rng.random()
    final_h = int(round(spec.crop_h[1] - altitude * (spec.crop_h[1] - spec.crop_h[0])))
    native = spec.native_scale[1] - altitude * (spec.native_scale[1] - spec.native_scale[0])
    h = max(12, int(round(final_h * native)))
    blur = params.blur * (spec.blur[0] + (altitude if aerial else rng.random()) * (spec.blur[1] - spec.blur[0]))
    return _View(num_frames, elevation, heading0, turn, period, phase0, sun, light, final_h, h, blur)


def _fit_crop(idn: Identity, view: _View, rng: np.random.Generator, aerial: bool) -> _Crop:
    """Crop geometry from the extents over the tracklet, like a detector box fitted to the person."""
    h, num_frames = view.h, view.num_frames
    probe_t = np.linspace(0, num_frames - 1, 3)
    boxes = np.array([_figure_bbox(_build_figure(idn, view.phase(t), view.heading(t), view.elevation, view.sun,
                                                 aerial)[0])
                      for t in probe_t])
    xmin, xmax, ymin, ymax = boxes[:, 0].min(), boxes[:, 1].max(), boxes[:, 2].min(), boxes[:, 3].max()
    margin_top, margin_bottom = rng.uniform(0.02, 0.08), rng.uniform(0.02, 0.08)
    scale = h * (1 - margin_top - margin_bottom) / (ymax - ymin)
    if aerial:
        w = int(round(scale * (xmax - xmin) * rng.uniform(1.05, 1.3)))
        w = int(np.clip(w, 0.55 * h, 1.1 * h))
    else:
        w = int(round(h * rng.uniform(0.46, 0.54)))
    ox = w / 2 - scale * (xmin + xmax) / 2
    oy = h * (1 - margin_bottom) + scale * ymin
    return _Crop(scale, w, ox, oy)


def _draw_scene(idn: Identity, cam: int, view: _View, crop: _Crop, rng: np.random.Generator,
                params: SynthParams, aerial: bool) -> _Scene:
    """Background, camera and lighting, clothing colours, neighbour, occluder and noise bank."""
    h, w, num_frames, scale = view.h, crop.w, view.num_frames, crop.scale
    pal_rgb = _palette(params)[0]
    # The box follows the walker, so the scene slides the other way, fastest for a side view.
    scroll = -_camera_matrix(view.heading0, view.elevation)[0, 0] * rng.uniform(0.8, 1.8) * h / 128
    pad = 4 + int(math.ceil(2 * params.jitter_px)) + 4
    scroll_base = int(math.ceil(abs(scroll) * num_frames)) if scroll < 0 else 0
    bg_w = w + int(math.ceil(abs(scroll) * num_frames)) + 2 * pad
    bg = _background(rng, h + 2 * pad, bg_w, aerial, params, pal_rgb)
    transform = _camera_transform(cam, rng, params)
    lut = _label_lut(idn.colours, rng, params, transform, extra={
        OCC: tuple(pal_rgb[rng.integers(len(pal_rgb))]) if not aerial else (48, 96, 46),
        OCC2: tuple(rng.uniform(60, 230, 3))})
    if rng.random() < params.neighbour_prob:
        centre = pad + scroll_base + scroll * num_frames / 2 + w / 2
        _add_neighbour(bg, rng, params, view.elevation, aerial, scale, centre, pad, h, w)
    bg = _apply(bg, transform)
    occ = _occluder(rng, aerial, 2 * h, 2 * w, num_frames) if rng.random() < params.occlusion_prob else None
    torso_period = 2 * scale * idn.height * 0.035
    out_h, out_w = (view.final_h, int(round(w * view.final_h / h))) if aerial else (h, w)
    # Sensor noise: windows of one per-tracklet bank (drawing fresh noise per frame costs more
    # than rendering the figure; shifted windows are as uncorrelated as needed here).
    bank = rng.standard_normal((out_h + 8, out_w + 8, 3), np.float32) * params.noise_std
    return _Scene(pad, scroll, scroll_base, bg, lut, occ, torso_period, out_h, out_w, bank)


def _render_frame(idn: Identity, t: int, jx: float, jy: float, view: _View, crop: _Crop, scene: _Scene,
                  rng: np.random.Generator, aerial: bool) -> np.ndarray:
    """Frame `t` with detection jitter (jx, jy): figure over the scrolled scene, blur, noise."""
    h, w, scale, ox, oy = view.h, crop.w, crop.scale, crop.ox, crop.oy
    items, head_info = _build_figure(idn, view.phase(t), view.heading(t), view.elevation, view.sun, aerial)
    labels_im = _rasterise(items, head_info, idn, 2 * scale, 2 * (ox - jx), 2 * (oy - jy), (2 * h, 2 * w),
                           view.light)
    if scene.occ is not None:
        _draw_occluder(ImageDraw.Draw(labels_im), scene.occ, t, 2 * h, 2 * w)
    labels = np.array(labels_im)
    if idn.pattern not in ("plain", "open"):
        rows = np.nonzero(((labels >> 2) == UPPER).any(axis=1))[0]
        if rows.size:
            _apply_pattern(labels, idn.pattern, scene.torso_period, rows[0], rows[-1], 2 * (ox - jx))
    fg = _colourise(labels, scene.lut)
    # The detector box moves with the jitter, so figure and background shift together.
    bx = scene.pad + scene.scroll_base + int(round(scene.scroll * t + jx))
    by = scene.pad + int(round(jy))
    window = scene.bg[by:by + h, bx:bx + w]
    frame = window * (1 - fg[..., 3:4] * (1 / 255)) + fg[..., :3]
    if aerial:
        out = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8))
        frame = np.asarray(out.resize((scene.out_w, scene.out_h), Image.BILINEAR), np.float32)
    frame = _blur(frame, view.blur)
    ny, nx = rng.integers(0, 9, 2)
    frame = frame + scene.bank[ny:ny + scene.out_h, nx:nx + scene.out_w]
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def _blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur of std `sigma` px: repeated [a, 1-2a, a] passes (edges replicated).

    Each pass adds variance 2a <= 0.5; for the sub-pixel to 1.3 px blurs used here this is several
    times faster than PIL's GaussianBlur on frames this small.
    """
    if sigma < 0.05:
        return frame
    passes = int(math.ceil(sigma * sigma / 0.5))
    a = np.float32(sigma * sigma / (2 * passes))
    for _ in range(passes):
        for axis in (0, 1):
            padded = np.concatenate([frame.take([0], axis), frame, frame.take([-1], axis)], axis)
            lo = padded[:-2] if axis == 0 else padded[:, :-2]
            hi = padded[2:] if axis == 0 else padded[:, 2:]
            frame = frame * (1 - 2 * a) + (lo + hi) * a
    return frame


def _add_neighbour(bg: np.ndarray, rng: np.random.Generator, params: SynthParams, elevation: float,
                   aerial: bool, scale: float, centre: float, pad: int, h: int, w: int) -> None:
    """Composite a standing other pedestrian beside the crop centre `centre` (bg px) into `bg`.

    Drawn into the background before the camera transform, so it shares the scene's lighting.
    """
    other = sample_identity(int(rng.integers(1 << 30)), int(rng.integers(1 << 30)), params)
    heading = rng.uniform(0, 2 * math.pi)
    items, head_info = _build_figure(other, rng.uniform(0, 2 * math.pi), heading, elevation, (0.5, 0.5), aerial)
    items = [it for it in items if not (it[2] == "polys" and it[3][1] // 4 == SHADOW)]
    side = 1 if rng.random() < 0.5 else -1
    s = scale * rng.uniform(0.85, 1.1)
    ox = centre + side * w * rng.uniform(0.6, 0.85)
    oy = pad + h * rng.uniform(0.9, 1.05)
    labels = np.array(_rasterise(items, head_info, other, 2 * s, 2 * ox, 2 * oy, (2 * bg.shape[0], 2 * bg.shape[1]),
                                 np.array([0.0, 0.6, 0.8])))
    identity_transform = (np.eye(3), np.zeros(3))
    lut = _label_lut(other.colours, rng, params, identity_transform)
    fg = _colourise(labels, lut)
    bg *= 1 - fg[..., 3:4] * (1 / 255)
    bg += fg[..., :3]
