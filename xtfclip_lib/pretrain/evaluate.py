"""The CLIP being pretrained, and what measures it: zero-shot caption retrieval and feature spread.

`_create_clip` builds a randomly initialised open_clip CLIP (image and text towers) of an
architecture open_clip knows, the tiny ones of ``model/configs/*.json`` included, at a square
resolution. `zero_shot_retrieval` scores held-out crops against the captions of all held-out
identities; `feature_spread` and `tracklet_feature_spread` say how different the image features
of the pretraining tracklets are (METHOD §8: a backbone whose features all point the same way
leaves re-ID training nothing to build on).
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor

# importing xtfclip_lib.model registers the architectures of model/configs/*.json with open_clip
from xtfclip_lib.model import quiet_open_clip
from xtfclip_lib.pretrain.crops import _CropBank, _normalise


def _check_arch(arch: str) -> None:
    """KeyError unless open_clip's factory can build `arch`."""
    if arch not in open_clip.list_models():
        raise KeyError(f"arch={arch!r} is neither an open_clip model nor one of model/configs/*.json")


def _create_clip(arch: str, image_size: int, seed: int) -> tuple[torch.nn.Module, Callable]:
    """A randomly initialised open_clip CLIP of `arch` at a square `image_size` (seeded), its tokenizer."""
    _check_arch(arch)
    with torch.random.fork_rng(devices=[]), quiet_open_clip():
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

