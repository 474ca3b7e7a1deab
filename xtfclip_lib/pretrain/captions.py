"""Words and captions: one English sentence per (person, camera) from attribute codes and colours.

Captions are written from a person's attribute codes (``attributes/train.csv``), the clothing
colours estimated from that person's ground-view crops (`xtfclip_lib.pretrain.colours`) and the
camera of the crop, e.g. "a young woman with long brown hair in a red jacket and blue jeans
carrying a backpack, seen from a drone". The word tables follow the code meanings of the
synthetic set (`xtfclip_lib.data.synth.ATTRIBUTE_VALUES`); the real annotation shares only the
number of codes per attribute. Long captions lose their least identifying phrases (DROP_ORDER)
until they fit the text tower's context; pretraining also drops phrases at random (`_Captioner`).
"""
from __future__ import annotations

import functools
from typing import Callable, Collection, Mapping, Sequence

import open_clip
import pandas as pd

from xtfclip_lib.data import AERIAL_CAMERAS, ATTRIBUTES, GROUND_CAMERAS, UNKNOWN_CODE, Tracklet

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


def _rows_by_pid(attributes: pd.DataFrame) -> dict[int, dict[str, int]]:
    """pid -> {attribute: code} of an attribute table (index = pid, the 15 columns)."""
    return {int(pid): row for pid, row in zip(attributes.index, attributes[list(ATTRIBUTES)]
                                              .to_dict("records"))}


def make_captions(tracklets: Sequence[Tracklet], attributes: pd.DataFrame,
                  colours: Mapping[int, tuple[str | None, str | None]] | None = None, *,
                  context_length: int | None = 32) -> list[str]:
    """One caption per tracklet: its person's attribute row and colours, its camera.

    `attributes` is an attribute table (index = pid, the 15 columns); a pid it lacks is captioned
    from colours and camera alone. `colours` maps pid -> (upper, lower), see `identity_colours`.
    """
    unknown = dict(UNKNOWN_CODE)
    rows = _rows_by_pid(attributes)
    return [caption_for(rows.get(t.pid, unknown), t.camid, (colours or {}).get(t.pid),
                        context_length=context_length) for t in tracklets]


class _Captioner:
    """Captions of the (person, camera) pairs of one dataset, with optional phrase dropout."""

    def __init__(self, attributes: pd.DataFrame, colours: Mapping[int, tuple[str | None, str | None]],
                 context_length: int):
        self.rows = _rows_by_pid(attributes)
        self.colours = dict(colours)
        self.context_length = context_length
        self.full = {(pid, cam): self(pid, cam) for pid in sorted(self.colours)
                     for cam in (*GROUND_CAMERAS, *AERIAL_CAMERAS)}

    def __call__(self, pid: int, camid: int, omit: Collection[str] = ()) -> str:
        return caption_for(self.rows.get(pid, dict(UNKNOWN_CODE)), camid, self.colours.get(pid),
                           context_length=self.context_length, omit=omit)
