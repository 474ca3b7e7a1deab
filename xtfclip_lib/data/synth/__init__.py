"""The synthetic aerial-ground video re-ID set of the embedded default (METHOD §1, §8)."""
from __future__ import annotations

from xtfclip_lib.data.synth.generate import (ATTRIBUTE_VALUES, GENERATOR_VERSION, SynthParams,
                                             generate_synthetic, render_tracklet)

__all__ = ["ATTRIBUTE_VALUES", "GENERATOR_VERSION", "SynthParams", "generate_synthetic", "render_tracklet"]
