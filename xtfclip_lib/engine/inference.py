"""Tracklet features, their cache, and the one retrieval protocol used for validation and test.

* `encode_tracklets` runs the model over a list of tracklets (restricted random or dense
  sampling, optional mirrored copy), sharded over ranks and gathered (METHOD §1, §5).
* `extract_features` adds flip test-time augmentation (METHOD §6) and returns a `FeatureSet`;
  `build_clip_memory` gives the per-identity CLIP-Memory (METHOD §2).
* `save_features` / `load_features` keep features in a run folder as ``.npz`` (no pickle), keyed
  by the checkpoint digest, the resolved config and the data manifest, so that they are never
  re-used once any of these changes (METHOD §7, "Stale caches").
* `score_cases` is the protocol: distances, optional re-ranking, the soft-biometric mask *before*
  the metrics, each case with its own attribute table (METHOD §7), one table per case + overall.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from xtfclip_lib import evaluation
from xtfclip_lib.engine.checkpoint import check_compatible, file_digest, load_checkpoint
from xtfclip_lib.config import Config, EvalConfig, config_digest, load_config_file
from xtfclip_lib.data import AGVPReID, Tracklet, attributes_for, load_agvpreid, split_validation
from xtfclip_lib.data import build_test_loader
from xtfclip_lib.engine.distributed import all_gather_rows, is_main_process, resolve_device
from xtfclip_lib.utils import atomic_write
from xtfclip_lib.model import build_model
from xtfclip_lib.utils import tqdm  # console bars; none in a notebook kernel

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"


@dataclass
class FeatureSet:
    """Features of a list of tracklets, row i for tracklet i."""
    features: np.ndarray   # (N, D) float32, before any normalisation
    pids: np.ndarray       # (N,) int64, the dataset's own pids
    camids: np.ndarray     # (N,) int64
    names: list[str]       # (N,) tracklet names (the submission lists these)

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray, tracklets: Sequence[Tracklet]) -> "FeatureSet":
        features = features.numpy() if isinstance(features, torch.Tensor) else features
        return cls(np.ascontiguousarray(features, dtype=np.float32),
                   np.array([t.pid for t in tracklets], dtype=np.int64),
                   np.array([t.camid for t in tracklets], dtype=np.int64),
                   [t.name for t in tracklets])


AMP_MODES = ("auto", "bf16", "off")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    Elsewhere oneDNN emulates bf16 and a bf16 step is slower than fp32, so ``train.amp='bf16'``
    is refused there.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """``train.amp`` -> autocast dtype, or None for fp32.

    "auto": bf16 on CUDA when supported, else fp16 (with a gradient scaler); None on CPU, where
    it would change the numbers of the embedded default. "bf16": bf16 on CUDA or on a CPU with
    native bf16 (`cpu_has_native_bf16`). "off": None.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"train.amp={amp!r}; expected one of {list(AMP_MODES)}")
    if amp == "off":
        return None
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.amp='bf16' but this GPU has no bf16; use train.amp=auto (fp16 "
                             "with a gradient scaler) or off")
        if device.type == "cpu" and not cpu_has_native_bf16():
            raise ValueError("train.amp='bf16' but this CPU has no native bf16 (AVX512-BF16 or "
                             "AMX): emulated bf16 is slower than fp32; use train.amp=off")
        return torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode and without gradients, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Encoding

def encode_tracklets(model: nn.Module, tracklets: Sequence[Tracklet], cfg: Config,
                     device: torch.device, *, memory: bool = False, flip: bool = False,
                     rank: int = 0, world_size: int = 1, desc: str = "features") -> torch.Tensor:
    """(N, D) float32 CPU features of `tracklets`, in their order, on every rank.

    Test features are the eval-mode forward ``[f_img, f_proj, f_tmd]``; with ``memory=True`` they
    are ``model.memory_features`` (projected class token, no camera/frame embedding). Each rank
    encodes every `world_size`-th tracklet; rows are gathered back in order. Dense sampling
    gives N clips per tracklet, whose features are averaged.
    """
    shard = list(range(rank, len(tracklets), world_size))
    loader = build_test_loader(cfg, [tracklets[i] for i in shard], flip=flip)
    dtype = autocast_dtype(device, cfg.train.amp)
    rows, index = [], []
    with eval_mode(model):
        for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
            clips = batch["clips"].to(device, non_blocking=True)          # (B, N, T, 3, H, W)
            B, N = clips.shape[:2]
            camids = batch["camids"].to(device).repeat_interleave(N)      # (B*N,)
            with autocast(device, dtype):
                out = (model.memory_features(clips.flatten(0, 1)) if memory
                       else model(clips.flatten(0, 1), camids))           # (B*N, D)
            rows.append(out.float().reshape(B, N, -1).mean(dim=1).cpu())
            index.append(torch.as_tensor(shard)[batch["index"]])
    return all_gather_rows(torch.cat(rows), torch.cat(index), len(tracklets))


def extract_features(model: nn.Module, tracklets: Sequence[Tracklet], cfg: Config,
                     device: torch.device, *, flip_tta: bool | None = None, rank: int = 0,
                     world_size: int = 1, desc: str = "features") -> FeatureSet:
    """Test features of `tracklets`; with flip TTA (default ``cfg.features.flip_tta``) the mean of
    each tracklet's features and those of its horizontal mirror (METHOD §6)."""
    flip_tta = cfg.features.flip_tta if flip_tta is None else flip_tta
    kwargs = dict(rank=rank, world_size=world_size)
    features = encode_tracklets(model, tracklets, cfg, device, desc=desc, **kwargs)
    if flip_tta:
        mirrored = encode_tracklets(model, tracklets, cfg, device, flip=True,
                                    desc=f"{desc} (flip)", **kwargs)
        features = evaluation.flip_average(features, mirrored)
    return FeatureSet.of(torch.as_tensor(features), tracklets)


def build_clip_memory(model: nn.Module, tracklets: Sequence[Tracklet], label_of: dict[int, int],
                      cfg: Config, device: torch.device, *, rank: int = 0,
                      world_size: int = 1) -> torch.Tensor:
    """CLIP-Memory M (num_classes, E): per-identity mean of `memory_features` (METHOD §2, §6).

    Every training tracklet, test transform, restricted random sampling (whatever
    ``data.test_sampling`` says), model in eval mode: built once, before training.
    """
    rrs_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_sampling="rrs"))
    features = encode_tracklets(model, tracklets, rrs_cfg, device, memory=True, rank=rank,
                                world_size=world_size, desc="CLIP-Memory")
    labels = torch.tensor([label_of[t.pid] for t in tracklets])
    num_classes = len(label_of)
    sums = torch.zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts


# --------------------------------------------------------------------------------------------
# Cache keyed by what produced the features (METHOD §7)

def data_manifest_digest(tracklets: Sequence[Tracklet]) -> str:
    """Hash of the tracklet records and of each frame file's size and modification time."""
    sha = hashlib.sha256()
    for t in tracklets:
        sha.update(f"{t.name}|{t.pid}|{t.camid}|{len(t.frames)}\n".encode())
        for frame in t.frames:
            stat = os.stat(frame)
            sha.update(f"{frame}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return sha.hexdigest()[:16]


def feature_config_digest(cfg: Config) -> str:
    """Digest of the resolved config without the options that act after the features (the
    ``eval`` section, which holds re-ranking and the mask penalty, and the mask switch), so that
    evaluation variants re-use one set of features."""
    neutral = dataclasses.replace(cfg, eval=EvalConfig(),
                                  features=dataclasses.replace(cfg.features, soft_biometric_mask=True))
    return config_digest(neutral)


def features_key(checkpoint_digest: str, cfg: Config, manifest_digest: str) -> str:
    text = json.dumps([checkpoint_digest, feature_config_digest(cfg), manifest_digest])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Name of the test features of the untrained model (pretrained backbone, freshly initialised heads).
UNTRAINED = "untrained-test"


def untrained_key(cfg: Config, lists: dict[str, list[Tracklet]]) -> str:
    """Cache key of the untrained model's test features: the resolved config (seed included), the
    backbone weights file's digest and the data manifest; there is no checkpoint to digest."""
    weights = cfg.model.pretrained
    if weights and Path(weights).is_file():
        weights = file_digest(weights)
    return features_key(f"untrained:{cfg.train.seed}:{weights}", cfg,
                        data_manifest_digest([t for ts in lists.values() for t in ts]))


def save_features(folder: str | Path, name: str, key: str, sets: dict[str, FeatureSet]) -> Path:
    """Write ``folder/<name>-<key>.npz`` holding every set (arrays only, no pickled objects)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(key)}
    for split, fs in sets.items():
        arrays.update({f"{split}__features": fs.features, f"{split}__pids": fs.pids,
                       f"{split}__camids": fs.camids, f"{split}__names": np.array(fs.names, dtype=str)})
    return atomic_write(folder / f"{name}-{key}.npz", lambda handle: np.savez(handle, **arrays))


def load_features(folder: str | Path, name: str, key: str) -> dict[str, FeatureSet] | None:
    """The sets saved under exactly this `key`, or None (never features made by something else)."""
    path = Path(folder) / f"{name}-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            splits = sorted({k.rsplit("__", 1)[0] for k in data.files if "__" in k})
            return {s: FeatureSet(data[f"{s}__features"], data[f"{s}__pids"], data[f"{s}__camids"],
                                  [str(n) for n in data[f"{s}__names"]]) for s in splits}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        # truncated, empty, or not ours (object arrays are refused): recompute, never crash
        logger.warning("feature cache %s does not load (%s: %s); treating it as a cache miss",
                       path, type(exc).__name__, exc)
        return None


# --------------------------------------------------------------------------------------------
# The protocol

@dataclass(frozen=True)
class RetrievalCase:
    """One retrieval task: query and gallery (keys of a dict of tracklet lists) and the attribute
    table of *this* case, which the soft-biometric mask reads (METHOD §7)."""
    name: str
    query: str
    gallery: str
    attributes: pd.DataFrame = dataclasses.field(compare=False, repr=False)


def test_protocol(data: AGVPReID) -> tuple[dict[str, list[Tracklet]], list[RetrievalCase]]:
    """Tracklet lists and cases of the AG-VPReID test set (case 1 aerial->ground, case 2 reverse)."""
    lists = {k: v for k, v in data.splits.items() if k != "train"}
    cases = [RetrievalCase("aerial_to_ground", "case1_query", "case1_gallery", data.attributes["case1"]),
             RetrievalCase("ground_to_aerial", "case2_query", "case2_gallery", data.attributes["case2"])]
    return lists, cases


def validation_protocol(val_query: Sequence[Tracklet], val_gallery: Sequence[Tracklet],
                        train_attributes: pd.DataFrame) -> tuple[dict[str, list[Tracklet]], list[RetrievalCase]]:
    """Held-out training identities, aerial query vs ground gallery, as in case 1 (METHOD §7)."""
    lists = {"val_query": list(val_query), "val_gallery": list(val_gallery)}
    return lists, [RetrievalCase("val_aerial_to_ground", "val_query", "val_gallery", train_attributes)]


def platform_cases(cases: Sequence[RetrievalCase]) -> list[RetrievalCase]:
    """A diagnostic pair on the test identities (METHOD §8): the case-1 ground gallery searched
    with aerial queries (case 1 itself) and with ground queries of the same people (the case-2
    queries), so that the gap between the two rows is what the change of platform costs."""
    case1 = next((c for c in cases if c.query == "case1_query"), None)
    if case1 is None:
        raise ValueError(f"platform_cases needs the test cases (case1_query); got {[c.name for c in cases]}")
    return [case1, RetrievalCase("ground_to_ground", "case2_query", case1.gallery, case1.attributes)]


def case_distmat(query: FeatureSet, gallery: FeatureSet, q_attrs: pd.DataFrame | None,
                 g_attrs: pd.DataFrame | None, eval_cfg: EvalConfig, *, rerank: bool) -> np.ndarray:
    """(Q, G) distances: Euclidean on L2-normalised features, optionally re-ranked, plus the
    soft-biometric penalty when attribute rows are given (added before any metric: METHOD §7).

    The mask is added after re-ranking, so that re-ranking's neighbour sets are built from
    appearance alone and the penalty survives unchanged into the ranking.
    """
    qf, gf = torch.from_numpy(query.features), torch.from_numpy(gallery.features)
    distmat = np.asarray(evaluation.compute_distance(qf, gf), dtype=np.float32)
    if rerank:
        distmat = evaluation.re_rank(distmat, np.asarray(evaluation.compute_distance(qf, qf)),
                                     np.asarray(evaluation.compute_distance(gf, gf)),
                                     k1=eval_cfg.rerank_k1, k2=eval_cfg.rerank_k2,
                                     lambda_value=eval_cfg.rerank_lambda)
    if q_attrs is not None:
        distmat = distmat + evaluation.soft_biometric_mask(
            q_attrs, g_attrs, attributes=eval_cfg.mask_attributes, penalty=eval_cfg.mask_penalty)
    return distmat


def case_distmats(sets: dict[str, FeatureSet], lists: dict[str, list[Tracklet]],
                  cases: Sequence[RetrievalCase], cfg: Config, *, mask: bool | None = None,
                  rerank: bool | None = None) -> dict[str, np.ndarray]:
    """`case_distmat` of every case; `mask`/`rerank` default to the config's switches."""
    mask = cfg.features.soft_biometric_mask if mask is None else mask
    rerank = cfg.eval.rerank if rerank is None else rerank
    out = {}
    for case in cases:
        q_attrs = attributes_for(lists[case.query], case.attributes) if mask else None
        g_attrs = attributes_for(lists[case.gallery], case.attributes) if mask else None
        out[case.name] = case_distmat(sets[case.query], sets[case.gallery], q_attrs, g_attrs,
                                      cfg.eval, rerank=rerank)
    return out


def score_cases(sets: dict[str, FeatureSet], lists: dict[str, list[Tracklet]],
                cases: Sequence[RetrievalCase], cfg: Config, *, mask: bool | None = None,
                rerank: bool | None = None) -> pd.DataFrame:
    """Per-case table (columns case, R1, R5, R10, R20, mAP, mINP; plus "overall" when there is
    more than one case) from precomputed features."""
    distmats = case_distmats(sets, lists, cases, cfg, mask=mask, rerank=rerank)
    return evaluation.evaluate_cases(
        {case.name: (distmats[case.name], sets[case.query].pids, sets[case.gallery].pids,
                     sets[case.query].camids, sets[case.gallery].camids) for case in cases},
        max_rank=cfg.eval.max_rank)


def encode_lists(model: nn.Module, lists: dict[str, list[Tracklet]], cfg: Config,
                 device: torch.device, *, flip_tta: bool | None = None, rank: int = 0,
                 world_size: int = 1) -> dict[str, FeatureSet]:
    """`extract_features` of every named tracklet list."""
    return {name: extract_features(model, tracklets, cfg, device, flip_tta=flip_tta, rank=rank,
                                   world_size=world_size, desc=name)
            for name, tracklets in lists.items()}


# --------------------------------------------------------------------------------------------
# A finished (or running) run folder

@dataclass
class RunFeatures:
    """What evaluating or submitting a run needs: its config, lists, cases and features."""
    cfg: Config
    checkpoint: Path
    lists: dict[str, list[Tracklet]]
    cases: list[RetrievalCase]
    sets: dict[str, FeatureSet]


def load_run_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto"
                   ) -> tuple[Config, nn.Module, Path]:
    """The config (config.yaml) and trained model of a run folder, in eval mode.

    `checkpoint`: "best" (falls back to last.pt when the run kept no best.pt) or "last".
    """
    run = Path(run_dir)
    cfg = load_config_file(run / "config.yaml")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint={checkpoint!r}; expected 'best' or 'last'")
    path = run / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        path = run / "last.pt"
    state = load_checkpoint(path)
    check_compatible(state["meta"], cfg, path)
    # the weights come from the checkpoint: skip loading the pretrained backbone
    random_init = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=""))
    model = build_model(random_init, num_classes=int(state["meta"]["num_classes"]))
    model.load_state_dict(state["model"])
    return cfg, model.to(resolve_device(device)).eval(), path


def run_features(run_dir: str | Path, *, split: str = "test", flip_tta: bool | None = None,
                 checkpoint: str = "best", device: str = "auto") -> RunFeatures:
    """Features of a run's test set or validation split, from features/ when the key matches.

    The key covers the checkpoint's bytes, the resolved config (with this `flip_tta`) and the
    data manifest, so a cached file is used only for exactly what would be recomputed.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r}; expected 'test' or 'val'")
    cfg, model, path = load_run_model(run_dir, checkpoint, device)
    if flip_tta is not None:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, flip_tta=flip_tta))
    data = load_agvpreid(cfg.data.root)
    if split == "test":
        lists, cases = test_protocol(data)
    else:
        _, val_query, val_gallery = split_validation(data.train, cfg.data.num_val_ids, cfg.train.seed)
        if not val_query:
            raise ValueError(f"run {run_dir} has no validation split (data.num_val_ids=0)")
        lists, cases = validation_protocol(val_query, val_gallery, data.attributes["train"])
    key = features_key(file_digest(path), cfg,
                       data_manifest_digest([t for ts in lists.values() for t in ts]))
    folder = Path(run_dir) / FEATURES_DIR
    sets = load_features(folder, split, key)
    if sets is None:
        device_obj = next(model.parameters()).device
        sets = encode_lists(model, lists, cfg, device_obj)
        save_features(folder, split, key, sets)
    else:
        logger.info("re-using %s features %s", split, folder / f"{split}-{key}.npz")
    return RunFeatures(cfg, path, lists, cases, sets)


def evaluate_run(run_dir: str | Path, *, split: str = "test", mask: bool | None = None,
                 rerank: bool | None = None, flip_tta: bool | None = None,
                 checkpoint: str = "best", device: str = "auto") -> pd.DataFrame:
    """Per-case table (+ overall) of a run folder; None options take the run's config."""
    run = run_features(run_dir, split=split, flip_tta=flip_tta, checkpoint=checkpoint, device=device)
    return score_cases(run.sets, run.lists, run.cases, run.cfg, mask=mask, rerank=rerank)
