"""Synthetic aerial-ground video person re-ID set in the AG-VPReID layout (the embedded default).

METHOD §1 fixes the layout and §8 what the set must make measurable: identity carried by
appearance that survives a steep aerial view (clothing colours and types, carried items, body
shape), soft biometrics that are informative but not unique, and cross-platform matching as the
hard part. Every person is a small articulated 3-D body (capsules, elliptic cylinders, boxes and a
shaded head) walking with a gait cycle, rendered by orthographic projection:

* ground cameras C0/C1 (CCTV, 10-30 degrees down) and C2/C3 (wearable, about eye level) see the
  figure from the side or obliquely in crops of about 128 x 64 px;
* UAV cameras C4/C5 look 50-86 degrees down, so vertical extents shrink by cos(elevation): the
  head top, hair or hat, shoulders and backpack dominate and the legs shrink. The frame is rendered
  small (altitude-dependent) and upsampled to a 44-72 px tall crop, then blurred. It is a different
  projection of the same 3-D body, never a resized ground frame.

Nuisances are per camera (colour cast, contrast, haze), per tracklet (illumination, clothing hue /
saturation / value jitter, background clutter, occluders, a neighbouring pedestrian, detection
jitter) and per frame (sensor noise). Their sizes live in `SynthParams`; `difficulty` scales them
all at once. Output is byte-identical for one seed: every identity and tracklet draws from its own
`numpy.random.SeedSequence` keyed by (seed, pid, purpose, index), so neither iteration order nor the
process pool changes a byte.

The stages are modules, in the order a frame is made: ``params`` (code meanings, palettes,
cameras, `SynthParams` and `SynthConfig`), ``identities`` (`sample_identity`), ``geometry`` (camera
and pose), ``body`` (the dressed figure), ``raster`` (the label canvas), ``colour`` (jitter, light,
camera cast), ``scene`` (backgrounds, occluders), ``render`` (`render_tracklet`), ``plan`` (splits
and tracklet lengths) and ``write`` (`generate_synthetic`: files, CSVs, manifest).

Public API: `generate_synthetic`, `SynthConfig`, `SynthParams`, `sample_identity`,
`render_tracklet`, `ATTRIBUTE_VALUES` (what each code means in this set), `GENERATOR_VERSION`.
"""
from __future__ import annotations

from xtfclip_lib.data.synth.identities import sample_identity
from xtfclip_lib.data.synth.params import ATTRIBUTE_VALUES, GENERATOR_VERSION, SynthConfig, SynthParams
from xtfclip_lib.data.synth.render import render_tracklet
from xtfclip_lib.data.synth.write import generate_synthetic

__all__ = ["ATTRIBUTE_VALUES", "GENERATOR_VERSION", "SynthConfig", "SynthParams", "generate_synthetic",
           "render_tracklet", "sample_identity"]
