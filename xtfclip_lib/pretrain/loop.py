"""Offline contrastive pretraining of a tiny CLIP on person crops with attribute captions.

No pretrained weights can be downloaded offline, yet X-TFCLIP starts from a CLIP image tower
(METHOD §2) and switch 1 (bicubic position-grid resize) only means something when a square grid
was learned first. So the embedded default pretrains a small open_clip CLIP (image and text towers
from ``model/configs/<arch>.json``, open_clip's tokenizer and ``ClipLoss``) on the *training*
identities of an AG-VPReID-layout set, at a square resolution, and saves it as an open_clip
checkpoint that `CLIPBackbone.load_pretrained` reads like OpenAI ViT-B-16 (METHOD §8: the tiny CLIP
must know something about people, but little about who is who across platforms).

Captions are written from a person's attribute codes (``attributes/train.csv``), the clothing
colours estimated from that person's ground-view crops, and the camera of the crop, e.g.
"a young woman with long brown hair in a red jacket and blue jeans carrying a backpack, seen from
a drone". Colours come from the pixels, not from the generator, so the same captions can be
written for the real AG-VPReID training set. By default the captions say colours only coarsely
("a bright jacket and dark jeans", `caption_colours`): with all 14 colour names the captions of
the synthetic set almost identify a person, the pretrained CLIP is then already a re-ID model,
and re-ID training has nothing left to show. The word tables follow the code meanings of the
synthetic set (`xtfclip_lib.data.synth.ATTRIBUTE_VALUES`); the real annotation shares only the
number of codes per attribute.

The budget is a number of steps (``config.PRETRAIN_STEPS``) at a fixed thread count
(``config.PRETRAIN_THREADS``), never seconds: the same seed gives a byte-identical checkpoint on
an idle or a busy machine (METHOD §8).

Public API: `pretrain_tiny_clip`, `caption_for`, `make_captions`, `clothing_colours`,
`identity_colours`, `name_colours`, `zero_shot_retrieval`, `feature_spread`,
`tracklet_feature_spread`, `caption_colours`, `PretrainTimeout`, `ATTRIBUTE_WORDS`, `COLOUR_NAMES`,
`CAMERA_PHRASES`, `DROP_ORDER`.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import numpy as np
import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from xtfclip_lib.config import PRETRAIN_STEPS, PRETRAIN_THREADS
from xtfclip_lib.data import ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.data import AERIAL_CAMERAS, GROUND_CAMERAS, Tracklet, load_agvpreid
from xtfclip_lib.data import decode_frame
from xtfclip_lib.model.backbone import register_local_configs
from xtfclip_lib.utils import atomic_write_bytes, atomic_write_text
from xtfclip_lib.utils import StepCounter, counter_path, tqdm  # console bars; none in a notebook kernel

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Words

# Code i of an attribute -> word(s); "" = say nothing (uninformative or folded into another word).
# The "unknown" code (one past the last entry) is never put into words.
ATTRIBUTE_WORDS: dict[str, tuple[str, ...]] = {
    "gender": ("man", "woman"),
    "age": ("", "teenage", "young", "adult", "middle-aged", "middle-aged", "older", "elderly"),
    "height": ("short", "", "tall", "very tall"),
    "body_volume": ("slim", "", "heavy"),
    "ethnicity": ("", "", "", ""),   # never captioned: not visible enough to be fair or useful
    "hair_color": ("black", "brown", "blonde", "red", "grey", "dyed"),
    "hairstyle": ("bald", "short", "mid-length", "long", "tied-back"),
    "beard": ("", "a beard"),
    "moustache": ("", "a moustache"),
    "glasses": ("", "glasses", "sunglasses"),
    "head_accessories": ("", "a cap", "a wide-brim hat", "a hood"),
    "upper_clothing": ("t-shirt", "long-sleeved shirt", "striped top", "checked shirt", "hoodie",
                       "sweater", "jacket", "coat", "tank top", "dress", "suit jacket",
                       "high-visibility vest"),
    "lower_clothing": ("trousers", "jeans", "shorts", "knee-length shorts", "short skirt",
                       "long skirt", "leggings", "wide trousers", "dress"),
    "feet": ("sneakers", "leather shoes", "boots", "sandals", "heels", "slippers"),
    "accessories": ("", "a backpack", "a shoulder bag", "a handbag", "a shopping bag",
                    "a suitcase", "an umbrella", "a box"),
}
CHILD_NOUNS = ("boy", "girl", "child")            # age codes 0-1, by gender code (2 = unknown)
UPPER_DRESS, LOWER_DRESS = 9, 8                   # the codes that mean "dress"
PLURAL_LOWER = {0, 1, 2, 3, 6, 7}                 # lower-clothing codes said without an article
CAMERA_PHRASES: dict[int, str] = {0: "seen from a CCTV camera", 1: "seen from a CCTV camera",
                                  2: "seen from a body-worn camera", 3: "seen from a body-worn camera",
                                  4: "seen from a drone", 5: "seen from a drone"}
assert all(len(ATTRIBUTE_WORDS[a]) == UNKNOWN_CODE[a] for a in ATTRIBUTES)

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


def _word(attrs: Mapping[str, int], name: str) -> str:
    code = int(attrs.get(name, UNKNOWN_CODE[name]))
    if not 0 <= code <= UNKNOWN_CODE[name]:
        raise ValueError(f"attribute {name!r} has code {code}; valid codes are 0..{UNKNOWN_CODE[name]} "
                         f"({UNKNOWN_CODE[name]} = unknown)")
    return "" if code == UNKNOWN_CODE[name] else ATTRIBUTE_WORDS[name][code]


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [i for i in items if i]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


@functools.lru_cache(maxsize=1)
def _token_counter() -> Callable[[str], int]:
    tokenizer = open_clip.SimpleTokenizer()
    return lambda text: len(tokenizer.encode(text))


# Optional phrases of a caption, dropped in this order (first = least useful for identity) when
# the caption exceeds the text context. Clothing, the subject noun and the camera always stay.
DROP_ORDER = ("moustache", "beard", "feet", "glasses", "body_volume", "height", "age", "hairstyle",
              "hair_color", "head_accessories", "accessories")


def caption_for(attrs_row: Mapping[str, int] | pd.Series, camid: int,
                colours: tuple[str | None, str | None] | None = None, *,
                context_length: int | None = 32, omit: Collection[str] = ()) -> str:
    """One English caption for a crop of a person with attribute codes `attrs_row` seen by `camid`.

    `attrs_row` maps attribute names to codes (a row of the attribute table; missing names and
    "unknown" codes are left out of the sentence). `colours` is (upper, lower) clothing colour
    names from `clothing_colours`, either may be None. `camid` 0-5 picks the platform phrase
    (C0/C1 CCTV, C2/C3 body-worn, C4/C5 drone). With `context_length`, the least identifying
    phrases (DROP_ORDER) are dropped until the caption fits that many tokens of open_clip's
    tokenizer (start and end tokens included); None keeps everything. `omit` names phrases of
    DROP_ORDER to leave out anyway (caption dropout in pretraining).
    """
    if camid not in CAMERA_PHRASES:
        raise ValueError(f"camid={camid!r}; expected an AG-VPReID camera 0-5 "
                         f"(C0-C3 ground, C4-C5 aerial)")
    attrs = {name: int(attrs_row[name]) for name in ATTRIBUTES if name in attrs_row}
    for name in attrs:
        _word(attrs, name)          # raises for a code out of range
    upper_colour, lower_colour = colours if colours is not None else (None, None)
    unknown_omit = set(omit) - set(DROP_ORDER)
    if unknown_omit:
        raise KeyError(f"omit={sorted(unknown_omit)}: only these phrases can be left out: {list(DROP_ORDER)}")
    dropped: set[str] = set(omit)

    def render() -> str:
        def word(name: str) -> str:
            return "" if name in dropped else _word(attrs, name)

        gender = int(attrs.get("gender", UNKNOWN_CODE["gender"]))
        age = int(attrs.get("age", UNKNOWN_CODE["age"]))
        noun = (CHILD_NOUNS[min(gender, 2)] if age in (0, 1)
                else ATTRIBUTE_WORDS["gender"][gender] if gender < UNKNOWN_CODE["gender"] else "person")
        subject = _with_article(" ".join(w for w in (word("height"), word("body_volume"), word("age"),
                                                     noun) if w))
        hair = ""
        style, hair_colour = word("hairstyle"), word("hair_color")
        if style == "bald":
            hair = "a bald head"
        elif style or hair_colour:
            hair = f"{style} {hair_colour} hair".replace("  ", " ").strip()
        facial = word("beard") or word("moustache")
        with_items = [hair, facial, word("glasses"), word("head_accessories")]
        upper, lower = _word(attrs, "upper_clothing"), _word(attrs, "lower_clothing")
        upper_code = attrs.get("upper_clothing", UNKNOWN_CODE["upper_clothing"])
        lower_code = attrs.get("lower_clothing", UNKNOWN_CODE["lower_clothing"])
        clothes = []
        if upper or upper_colour:
            clothes.append(_with_article(" ".join(w for w in (upper_colour, upper or "top") if w)))
        if upper_code != UPPER_DRESS and (lower or lower_colour):
            piece = " ".join(w for w in (lower_colour, lower or "trousers") if w)
            clothes.append(piece if lower_code in PLURAL_LOWER or not lower else _with_article(piece))
        clothes.append(word("feet"))
        parts = [subject]
        if any(with_items):
            parts.append("with " + _join(with_items))
        if any(clothes):
            parts.append("in " + _join(clothes))
        if word("accessories"):
            parts.append("carrying " + word("accessories"))
        return " ".join(parts) + ", " + CAMERA_PHRASES[camid]

    caption = render()
    if context_length is not None:
        count = _token_counter()
        for name in DROP_ORDER:
            if count(caption) + 2 <= context_length:
                break
            dropped.add(name)
            caption = render()
    return caption


# ------------------------------------------------------------------------------------------------
# Colours from pixels


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
COLOUR_WORDS = ("named", "coarse", "none")


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


def make_captions(tracklets: Sequence[Tracklet], attributes: pd.DataFrame,
                  colours: Mapping[int, tuple[str | None, str | None]] | None = None, *,
                  context_length: int | None = 32) -> list[str]:
    """One caption per tracklet: its person's attribute row and colours, its camera.

    `attributes` is an attribute table (index = pid, the 15 columns); a pid it lacks is captioned
    from colours and camera alone. `colours` maps pid -> (upper, lower), see `identity_colours`.
    """
    unknown = dict(UNKNOWN_CODE)
    rows = {int(pid): row for pid, row in zip(attributes.index, attributes[list(ATTRIBUTES)]
                                              .to_dict("records"))}
    return [caption_for(rows.get(t.pid, unknown), t.camid, (colours or {}).get(t.pid),
                        context_length=context_length) for t in tracklets]


# ------------------------------------------------------------------------------------------------
# Crops in memory


@dataclass
class _CropBank:
    """Decoded square crops of a set of tracklets: frames (M, 3, S, S) uint8 and per-tracklet rows."""
    tracklets: list[Tracklet]
    frames: Tensor
    rows: list[np.ndarray]      # rows[i]: indices into `frames` of tracklets[i]'s crops

    def numpy_frames(self, i: int) -> np.ndarray:
        return self.frames[self.rows[i]].permute(0, 2, 3, 1).numpy()      # (N, S, S, 3)


def _evenly_spaced(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _load_crops(tracklets: Sequence[Tracklet], image_size: int, per_tracklet: int,
                progress: bool) -> _CropBank:
    """Decode up to `per_tracklet` evenly spaced frames of each tracklet, resized to a square."""
    frames, rows, count = [], [], 0
    for t in tqdm(tracklets, desc="decode", unit="tracklet", disable=not progress, leave=False):
        picks = _evenly_spaced(len(t.frames), per_tracklet)
        frames += [decode_frame(t.frames[i], (image_size, image_size)) for i in picks]
        rows.append(np.arange(count, count + len(picks)))
        count += len(picks)
    stacked = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    return _CropBank(list(tracklets), stacked, rows)


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """(N, 3, S, S) uint8 -> (N, 3, S, S) float, mildly augmented and normalised (mean = std = 0.5).

    Random resized crop (area 70-100 %, aspect within +-15 %), horizontal flip, brightness,
    contrast and saturation within about +-15 %. Hue is left alone: the captions name colours.
    """
    N = images.shape[0]
    x = images.float() / 255.0

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(N, generator=generator)

    area, aspect = uniform(0.70, 1.0), torch.exp(uniform(math.log(0.87), math.log(1.15)))
    scale_w = (area * aspect).sqrt().clamp(max=1.0)
    scale_h = (area / aspect).sqrt().clamp(max=1.0)
    shift_x = (1 - scale_w) * uniform(-1.0, 1.0)
    shift_y = (1 - scale_h) * uniform(-1.0, 1.0)
    flip = torch.where(torch.rand(N, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(N, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale_w * flip, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = scale_h, shift_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness, contrast, saturation = uniform(0.85, 1.15), uniform(0.85, 1.15), uniform(0.85, 1.15)
    x = x * brightness[:, None, None, None]
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    x = grey + (x - grey) * contrast[:, None, None, None]
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = luma + (x - luma) * saturation[:, None, None, None]
    return (x.clamp(0, 1) - 0.5) / 0.5


def _normalise(images: Tensor) -> Tensor:
    return (images.float() / 255.0 - 0.5) / 0.5


# ------------------------------------------------------------------------------------------------
# Model, evaluation


class _QuietOpenClip(logging.Filter):
    """Drops open_clip's factory chatter (INFO lines on the root logger) and its "No pretrained
    weights loaded" warning: random initialisation is what pretraining wants."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "open_clip" not in Path(record.pathname).parts:
            return True
        return record.levelno >= logging.WARNING and "No pretrained weights" not in record.getMessage()


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    quiet, root = _QuietOpenClip(), logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _create_clip(arch: str, image_size: int, seed: int) -> tuple[torch.nn.Module, Callable]:
    """A randomly initialised open_clip CLIP of `arch` at a square `image_size` (seeded), its tokenizer."""
    register_local_configs()
    if arch not in open_clip.list_models():
        raise KeyError(f"arch={arch!r} is neither an open_clip model nor one of model/configs/*.json")
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None, force_image_size=image_size)
        tokenizer = open_clip.get_tokenizer(arch)
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(model, "encode_text"):
        raise ValueError(f"arch={arch!r} is not a CLIP with image and text towers")
    return model, tokenizer


@torch.no_grad()
def _encode_images(model, images: Tensor, batch_size: int = 256) -> Tensor:
    """(N, 3, S, S) uint8 -> (N, E) L2-normalised image embeddings."""
    return torch.cat([model.encode_image(_normalise(images[i:i + batch_size]), normalize=True)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def zero_shot_retrieval(model, tokenizer, bank: _CropBank, captions: Mapping[tuple[int, int], str]
                        ) -> dict[str, float]:
    """Top-1 caption retrieval of held-out crops among the captions of all held-out identities.

    For a crop of person p from camera c, the candidates are the distinct captions
    ``captions[(q, c)]`` of every held-out person q (same camera phrase, so only the person is in
    question); the crop counts as right when its best-scoring caption equals its own. Returns
    ``top1`` (all crops), ``top1_aerial``, ``top1_ground``, ``chance`` (mean of 1 / candidates),
    ``num_crops`` and ``num_ids``.
    """
    was_training = model.training
    model.eval()
    pids = sorted({t.pid for t in bank.tracklets})
    image_features = _encode_images(model, bank.frames)
    hits = {"aerial": [], "ground": []}
    chance = []
    text_cache: dict[str, Tensor] = {}
    for i, t in enumerate(bank.tracklets):
        candidates = sorted({captions[(q, t.camid)] for q in pids})
        missing = [c for c in candidates if c not in text_cache]
        if missing:
            feats = model.encode_text(tokenizer(missing), normalize=True)
            text_cache.update(zip(missing, feats))
        text = torch.stack([text_cache[c] for c in candidates])                  # (C, E)
        best = (image_features[bank.rows[i]] @ text.T).argmax(1)                   # (n,)
        own = candidates.index(captions[(t.pid, t.camid)])
        hits[t.platform] += (best == own).tolist()
        chance += [1.0 / len(candidates)] * len(bank.rows[i])
    model.train(was_training)
    every = hits["aerial"] + hits["ground"]
    return {"top1": float(np.mean(every)) if every else float("nan"),
            "top1_aerial": float(np.mean(hits["aerial"])) if hits["aerial"] else float("nan"),
            "top1_ground": float(np.mean(hits["ground"])) if hits["ground"] else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan"),
            "num_crops": len(every), "num_ids": len(pids)}


def feature_spread(features: Tensor | np.ndarray) -> dict[str, float]:
    """How different the rows of (N, D) `features` are: ``mean_cosine`` and ``varying_energy``.

    ``mean_cosine`` is the mean cosine similarity over all pairs of distinct rows (1.0: every
    row points the same way); ``varying_energy`` the share of the features' mean squared norm
    that is not their common mean (0.0: every row is the same vector). METHOD §8: a backbone
    whose pooled features sit at a mean cosine of 0.99 leaves a per-vector normalisation nothing
    to classify and lets batch-hard triplet collapse the embedding.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {tuple(x.shape)}")
    n = F.normalize(x, dim=1)
    N = x.shape[0]
    total = n.sum(0)
    mean_cosine = (total @ total - (n * n).sum()) / (N * (N - 1))
    varying = ((x - x.mean(0)) ** 2).sum(1).mean() / (x * x).sum(1).mean().clamp(min=1e-300)
    return {"mean_cosine": float(mean_cosine), "varying_energy": float(varying), "num": int(N)}


@torch.no_grad()
def _tracklet_image_features(model, bank: _CropBank, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Per-tracklet means of the image tower's class token after ``ln_post`` (what re-ID pools as
    f_img) and of its projection (f_proj), each (num_tracklets, .)."""
    visual, captured = model.visual, []
    handle = visual.ln_post.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        projected = []
        for i in range(0, len(bank.frames), batch_size):
            projected.append(model.encode_image(_normalise(bank.frames[i:i + batch_size])))
    finally:
        handle.remove()
    tokens = torch.cat([c[:, 0] if c.dim() == 3 else c for c in captured])
    projected = torch.cat(projected)
    rows = [torch.as_tensor(r) for r in bank.rows]
    return (torch.stack([tokens[r].mean(0) for r in rows]), torch.stack([projected[r].mean(0) for r in rows]))


def tracklet_feature_spread(model, bank: _CropBank) -> dict[str, float]:
    """`feature_spread` of the tracklet-pooled class-token features of `bank` (and ``*_proj`` of
    their projections), the model's mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        tokens, projected = _tracklet_image_features(model, bank)
    finally:
        model.train(was_training)
    spread = feature_spread(tokens)
    spread |= {f"{k}_proj": v for k, v in feature_spread(projected).items() if k != "num"}
    return spread


# ------------------------------------------------------------------------------------------------
# Pretraining


def _data_digest(root: Path, tracklets: Sequence[Tracklet], attributes: pd.DataFrame) -> str:
    """sha256 over the relative path and size of every frame used, plus the attribute rows."""
    digest = hashlib.sha256()
    for t in tracklets:
        for frame in t.frames:
            digest.update(f"{os.path.relpath(frame, root)}\0{os.path.getsize(frame)}\n".encode())
    digest.update(attributes.to_csv().encode())
    return "sha256:" + digest.hexdigest()


def _split_ids(pids: Sequence[int], num_eval_ids: int) -> tuple[list[int], list[int]]:
    """(pretraining pids, held-out pids): at most a quarter of the ids are held out, at least 2.

    The choice depends on the set of pids only, not on the run's seed, so that runs with
    different seeds are measured on the same people.
    """
    pids = sorted(set(pids))
    num_eval = min(num_eval_ids, max(2, len(pids) // 4))
    if len(pids) - num_eval < 2:
        raise ValueError(f"the training split has {len(pids)} identities; pretraining needs at "
                         f"least {num_eval + 2} ({num_eval} are held out for zero-shot retrieval)")
    rng = np.random.default_rng(np.random.SeedSequence([0, 0x5EED]))
    held_out = sorted(int(p) for p in rng.choice(pids, size=num_eval, replace=False))
    return [p for p in pids if p not in held_out], held_out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; gains, biases, embeddings and the logit scale are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "class_embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(progress: float, base_lr: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first `warmup` of training, then cosine decay to zero."""
    if progress < warmup:
        return base_lr * (progress + 1e-3) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


class _Captioner:
    """Captions of the (person, camera) pairs of one dataset, with optional phrase dropout."""

    def __init__(self, attributes: pd.DataFrame, colours: Mapping[int, tuple[str | None, str | None]],
                 context_length: int):
        self.rows = {int(pid): row for pid, row in
                     zip(attributes.index, attributes[list(ATTRIBUTES)].to_dict("records"))}
        self.colours = dict(colours)
        self.context_length = context_length
        self.full = {(pid, cam): self(pid, cam) for pid in sorted(self.colours)
                     for cam in (*GROUND_CAMERAS, *AERIAL_CAMERAS)}

    def __call__(self, pid: int, camid: int, omit: Collection[str] = ()) -> str:
        return caption_for(self.rows.get(pid, dict(UNKNOWN_CODE)), camid, self.colours.get(pid),
                           context_length=self.context_length, omit=omit)


class _BatchSampler:
    """Training batches: distinct identities, one tracklet each, a few of its crops (seeded)."""

    def __init__(self, bank: _CropBank, pids: Sequence[int], captioner: _Captioner, tokenizer,
                 batch_size: int, frames_per_tracklet: int, seed: int):
        self.bank, self.pids, self.captioner, self.tokenizer = bank, list(pids), captioner, tokenizer
        self.batch_size, self.frames_per_tracklet = batch_size, frames_per_tracklet
        self.by_pid: dict[int, dict[str, list[int]]] = {}
        for i, t in enumerate(bank.tracklets):
            self.by_pid.setdefault(t.pid, {"aerial": [], "ground": []})[t.platform].append(i)
        self.tokens = {key: tokenizer([text])[0] for key, text in captioner.full.items()}
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC11B]))

    def draw(self, dropout: float) -> tuple[Tensor, Tensor]:
        """(F, B, 3, S, S) uint8 crops and (B, L) caption tokens of B distinct captions.

        Identities come in random order; each picks aerial or ground with equal chance (when it
        has both), a tracklet of that platform and F of its crops. An identity whose caption is
        already in the batch is skipped: ClipLoss takes every other caption as a negative. With
        `dropout` > 0 each optional phrase is left out with that probability, so that the text
        tower learns phrases rather than one sentence per person.
        """
        rng, bank = self.rng, self.bank
        chosen, seen = [], set()
        for pid in rng.permutation(self.pids):
            own = self.by_pid[int(pid)]
            platforms = [p for p in ("aerial", "ground") if own[p]]
            index = int(rng.choice(own[platforms[int(rng.integers(len(platforms)))]]))
            text = self.captioner.full[(int(pid), bank.tracklets[index].camid)]
            if text not in seen:
                seen.add(text)
                chosen.append(index)
            if len(chosen) == self.batch_size:
                break
        rows = np.stack([bank.rows[i][rng.choice(len(bank.rows[i]), self.frames_per_tracklet,
                                                 replace=len(bank.rows[i]) < self.frames_per_tracklet)]
                         for i in chosen], 1)                                 # (F, B) crop rows
        keys = [(bank.tracklets[i].pid, bank.tracklets[i].camid) for i in chosen]
        if dropout > 0:
            text = self.tokenizer([self.captioner(pid, cam, {n for n in DROP_ORDER if rng.random() < dropout})
                                   for pid, cam in keys])
        else:
            text = torch.stack([self.tokens[key] for key in keys])
        images = bank.frames[torch.from_numpy(rows.reshape(-1))]
        return images.view(*rows.shape, *bank.frames.shape[1:]), text


def _clip_loss(model, loss_fn, images: Tensor, text: Tensor) -> Tensor:
    """images (F, B, 3, S, S) float, text (B, L) -> open_clip's ClipLoss averaged over the F frame sets."""
    F_, B = images.shape[:2]
    image_features = model.encode_image(images.flatten(0, 1), normalize=True).view(F_, B, -1)
    text_features = model.encode_text(text, normalize=True)
    scale = model.logit_scale.exp()
    return torch.stack([loss_fn(image_features[f], text_features, scale) for f in range(F_)]).mean()


class PretrainTimeout(RuntimeError):
    """The optional wall-clock safety ceiling (``max_seconds``) was reached before the step budget."""


def pretrain_tiny_clip(data_root: str | os.PathLike, out_path: str | os.PathLike, *,
                       arch: str = "tiny-clip", image_size: int = 64, steps: int = PRETRAIN_STEPS,
                       max_seconds: float | None = None, batch_size: int = 48,
                       frames_per_tracklet: int = 1, lr: float = 1e-3, weight_decay: float = 0.1,
                       caption_dropout: float = 0.3, seed: int = 0, num_eval_ids: int = 12,
                       crops_per_tracklet: int = 8, num_threads: int | None = PRETRAIN_THREADS,
                       colour_words: str = "coarse", overwrite: bool = False,
                       progress: bool = True) -> dict[str, Any]:
    """Pretrain a CLIP of `arch` contrastively on the training crops of `data_root`; save it.

    Each step draws `batch_size` training identities with distinct captions, one tracklet each
    and `frames_per_tracklet` of its crops (`_BatchSampler`); open_clip's ClipLoss pairs each of
    these frame sets with the captions, averaged over the frame sets. Crops are the tracklet's
    frames resized to `image_size` x `image_size` (up to `crops_per_tracklet` evenly spaced
    frames each, decoded once), mildly augmented. Each optional caption phrase (DROP_ORDER) is
    left out with probability `caption_dropout`; `colour_words` says how colours are named
    (`caption_colours`). AdamW with a 5 % warm-up and cosine decay over exactly `steps` steps.

    The budget is a step count and nothing else decides what is computed: the same `seed` and
    `num_threads` (torch CPU threads while pretraining; None keeps the current setting) give a
    byte-identical checkpoint on an idle or a loaded machine (METHOD §8). `max_seconds` is only a
    safety ceiling: reaching it raises `PretrainTimeout` naming the setting and writes nothing.

    `num_eval_ids` training identities (at most a quarter; the same ones whatever the seed) are
    held out of pretraining; their crops measure zero-shot caption retrieval
    (`zero_shot_retrieval`) before and after. The spread of the image features of the
    pretraining tracklets (`feature_spread`) is measured before and after too. Only the
    ``train`` split is read, never a test identity.

    Writes `out_path` atomically as ``{"state_dict": ..., "arch": ..., "image_size": ...}`` (an
    open_clip checkpoint, loadable with ``torch.load(weights_only=True)``) and a JSON sidecar
    beside it (same name, ``.json``) with the settings, metrics and a digest of the data used.
    An existing `out_path` is a ValueError unless `overwrite`. Returns the metrics: ``steps``,
    ``seconds``, ``train_seconds``, ``loss_curve`` ([step, mean loss] every few steps),
    ``loss_first`` / ``loss_last`` (mean of the first / last 10 steps), ``probe_loss_before`` /
    ``probe_loss_after`` (the loss on a fixed, unaugmented batch of training crops),
    ``zero_shot_before`` / ``zero_shot_after``, ``spread_before`` / ``spread_after`` and the
    data counts. Timings are reported, never used.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected a positive whole number of pretraining steps")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds={max_seconds!r}; expected a positive number of seconds or None")
    if colour_words not in COLOUR_WORDS:
        raise ValueError(f"colour_words={colour_words!r}; expected one of {COLOUR_WORDS}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads={num_threads!r}; expected a positive thread count or None")
    if batch_size < 2 or frames_per_tracklet < 1 or not 0 <= caption_dropout < 1:
        raise ValueError(f"batch_size={batch_size!r} (>= 2), frames_per_tracklet={frames_per_tracklet!r} "
                         f"(>= 1) or caption_dropout={caption_dropout!r} (0 <= p < 1) is out of range")
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} exists; pass overwrite=True (CLI: --overwrite) to replace it, "
                         "or choose another output path")
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _pretrain(Path(data_root), out_path, dict(
            arch=arch, image_size=image_size, steps=steps, max_seconds=max_seconds,
            batch_size=batch_size, frames_per_tracklet=frames_per_tracklet, lr=lr,
            weight_decay=weight_decay, caption_dropout=caption_dropout, seed=seed,
            num_eval_ids=num_eval_ids, crops_per_tracklet=crops_per_tracklet, colour_words=colour_words,
            torch_threads=torch.get_num_threads()), overwrite, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(data_root: Path, out_path: Path, settings: dict[str, Any], overwrite: bool,
              progress: bool) -> dict[str, Any]:
    """The body of `pretrain_tiny_clip` (arguments checked, threads set)."""
    start = time.perf_counter()
    arch, image_size, seed = settings["arch"], settings["image_size"], settings["seed"]
    steps, max_seconds, lr = settings["steps"], settings["max_seconds"], settings["lr"]

    # Data: training identities only, a few held out; crops decoded once.
    data = load_agvpreid(data_root)
    train_pids, eval_pids = _split_ids([t.pid for t in data.train], settings["num_eval_ids"])
    bank = _load_crops([t for t in data.train if t.pid in set(train_pids)], image_size,
                       settings["crops_per_tracklet"], progress)
    eval_bank = _load_crops([t for t in data.train if t.pid in set(eval_pids)], image_size,
                            max(1, settings["crops_per_tracklet"] // 2), progress)
    where = {t.name: (b, i) for b in (bank, eval_bank) for i, t in enumerate(b.tracklets)}
    colours = identity_colours(data.train, lambda t: where[t.name][0].numpy_frames(where[t.name][1]))
    colours = caption_colours(colours, settings["colour_words"])

    model, tokenizer = _create_clip(arch, image_size, seed)
    captioner = _Captioner(data.attributes["train"], colours, int(model.context_length))
    sampler = _BatchSampler(bank, train_pids, captioner, tokenizer, settings["batch_size"],
                            settings["frames_per_tracklet"], seed)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = open_clip.ClipLoss()
    logger.info("%d identities pretrain (%d tracklets, %d crops), %d held out; e.g. %r",
                len(train_pids), len(bank.tracklets), len(bank.frames), len(eval_pids),
                captioner.full[(train_pids[0], bank.tracklets[0].camid)])

    probe_images, probe_text = sampler.draw(0.0)
    probe_images = _normalise(probe_images)
    model.eval()
    with torch.no_grad():
        probe_before = _clip_loss(model, loss_fn, probe_images, probe_text).item()
    zero_shot_before = zero_shot_retrieval(model, tokenizer, eval_bank, captioner.full)
    spread_before = tracklet_feature_spread(model, bank)
    logger.info("before pretraining: probe loss %.3f, zero-shot top-1 %.3f (chance %.3f), mean "
                "pairwise cosine of tracklet features %.3f", probe_before, zero_shot_before["top1"],
                zero_shot_before["chance"], spread_before["mean_cosine"])

    optimizer = torch.optim.AdamW(_param_groups(model, settings["weight_decay"]), lr=lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    model.train()
    losses: list[float] = []
    train_start = time.perf_counter()
    bar = tqdm(total=steps, desc="pretrain-clip", unit="step", disable=not progress)
    # the workbook's bar reads the step counter (the notebook kernel draws no bar of its own)
    with StepCounter(counter_path(out_path), steps) as counter:
        for step in range(steps):
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                bar.close()
                raise PretrainTimeout(
                    f"pretraining reached its safety ceiling max_seconds={max_seconds:g} after {step} of "
                    f"{steps} steps; nothing was written. Raise or drop max_seconds (CLI: --max-seconds); "
                    f"the result depends only on steps={steps}, never on time")
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step / steps, lr)
            images, text = sampler.draw(settings["caption_dropout"])
            images = _augment(images.flatten(0, 1), generator).view(images.shape)
            loss = _clip_loss(model, loss_fn, images, text)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))     # CLIP's cap on the temperature
            losses.append(loss.item())
            bar.update()
            counter.update(step + 1)
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()

    model.eval()
    with torch.no_grad():
        probe_after = _clip_loss(model, loss_fn, probe_images, probe_text).item()
    zero_shot_after = zero_shot_retrieval(model, tokenizer, eval_bank, captioner.full)
    spread_after = tracklet_feature_spread(model, bank)
    steps, every = len(losses), max(1, len(losses) // 50)
    metrics: dict[str, Any] = {
        "steps": steps, "train_seconds": time.perf_counter() - train_start,
        "loss_curve": [[i + every, float(np.mean(losses[i:i + every]))] for i in range(0, steps, every)],
        "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
        "probe_loss_before": probe_before, "probe_loss_after": probe_after,
        "zero_shot_before": zero_shot_before, "zero_shot_after": zero_shot_after,
        "spread_before": spread_before, "spread_after": spread_after,
        "num_train_ids": len(train_pids), "num_train_tracklets": len(bank.tracklets),
        "num_train_crops": int(len(bank.frames)), "held_out_ids": eval_pids,
        "logit_scale": model.logit_scale.exp().item(),
    }

    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} appeared while pretraining; pass overwrite=True to replace it")
    checkpoint = {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                  "arch": arch, "image_size": image_size}
    buffer = io.BytesIO()     # not saved under the file's own name: torch would record that name
    torch.save(checkpoint, buffer)   # (a temporary one holds the PID) inside the archive
    atomic_write_bytes(out_path, buffer.getvalue())
    metrics["seconds"] = time.perf_counter() - start
    manifest = Path(data_root) / "manifest.json"
    sidecar = {
        "arch": arch, "image_size": image_size, "checkpoint": out_path.name, "settings": settings,
        "data": {"root": str(data_root),
                 "manifest_digest": json.loads(manifest.read_text()).get("digest") if manifest.is_file() else None,
                 "data_digest": _data_digest(Path(data_root), data.train, data.attributes["train"])},
        "example_captions": [captioner.full[(pid, cam)] for pid in train_pids[:2] for cam in (0, 2, 4)],
        "metrics": metrics,
    }
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(sidecar, indent=1) + "\n")
    logger.info("pretrained %s for %d steps in %.0f s: loss %.3f -> %.3f, zero-shot top-1 %.3f -> %.3f "
                "(chance %.3f); wrote %s", arch, steps, metrics["seconds"], metrics["loss_first"],
                metrics["loss_last"], zero_shot_before["top1"], zero_shot_after["top1"],
                zero_shot_after["chance"], out_path)
    return metrics
