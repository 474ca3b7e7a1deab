"""Run configuration: frozen dataclasses, YAML presets, named variants and dotted overrides.

A run is fully described by one `Config`. It is built in three layers, always in this order:

1. the defaults below (the method of docs/METHOD.md at paper scale);
2. a YAML *preset* from ``xtfclip_lib/presets/`` (``paper``, ``tiny``, ``quick``) that lists only
   its differences from the defaults;
3. a *variant* (``x_tfclip``: every switch on, ``tf_clip``: every switch off) and then dotted
   overrides such as ``features.attention_pooling=false``.

The CLI, the notebooks and the workbook all go through `load_config`, so the same string gives
the same run everywhere. The resolved config is saved beside every result and in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = ["Config", "DataConfig", "EvalConfig", "FeatureConfig", "LossConfig", "ModelConfig", "TrainConfig",
           "SWITCHES", "EXTENSIONS", "TEST_TIME_SWITCHES", "VARIANTS", "PRESET_DIR", "LATER_KEYS",
           "with_override", "apply_mapping", "parse_override", "available_presets", "read_preset", "read_yaml",
           "load_config", "to_dict", "from_dict", "to_yaml", "save_config", "load_config_file", "config_digest"]

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class FeatureConfig:
    """The seven X-TFCLIP extensions (METHOD §4) and the two extra switches of METHOD §6.

    Each is False for TF-CLIP's behaviour and True for X-TFCLIP's; flipping one changes exactly
    what its comment says and nothing else.
    """
    bicubic_pos_embed: bool = True        # 1: resize the CLIP position grid bicubic (else bilinear)
    attention_pooling: bool = True        # 2: learned attention pooling at every pooling site (else means)
    online_label_smoothing: bool = True   # 3: Online Label Smoothing for ID losses (else CE, smoothing 0.1)
    frame_pos_embed: bool = True          # 4: learned per-frame-index embedding added to the class token
    learnable_memory_weight: bool = True  # 5: M' = s*M + (1-s)*SSP (else M + SSP)
    instance_norm_neck: bool = True       # 6: per-vector normalisation neck (else BatchNorm1d)
    soft_biometric_mask: bool = True      # 7: +100 distance where known soft biometrics differ (test only)
    grad_centralization: bool = True      # METHOD §6: centre every >1-D gradient before the step
    flip_tta: bool = True                 # METHOD §6: average features of each tracklet and its flip


SWITCHES: tuple[str, ...] = tuple(f.name for f in fields(FeatureConfig))
EXTENSIONS: tuple[str, ...] = SWITCHES[:7]  # the seven of the X-TFCLIP README, in its order
TEST_TIME_SWITCHES: tuple[str, ...] = ("soft_biometric_mask", "flip_tta")
VARIANTS: dict[str, dict[str, bool]] = {
    "x_tfclip": {name: True for name in SWITCHES},
    "tf_clip": {name: False for name in SWITCHES},
}


@dataclass(frozen=True)
class DataConfig:
    """Where the tracklets are and how they are sampled and augmented (METHOD §1)."""
    root: str = "data/synthetic-ag"        # AG-VPReID layout: train/, case1_*/, case2_*/, attributes/
    image_size_hw: tuple[int, int] = (288, 144)  # network input (height, width)
    num_frames: int = 8                    # T frames per tracklet
    sample_stride: int = 4                 # training: random temporal crop of T frames this far apart
    num_ids_per_batch: int = 3             # P identities per training batch
    num_tracklets_per_id: int = 6          # K tracklets per identity (batch = P*K tracklets)
    test_sampling: str = "rrs"             # "rrs" (restricted random, one frame per chunk) or "dense"
    flip_p: float = 0.5                    # horizontal flip probability (whole tracklet)
    pad: int = 10                          # padding before the random crop, pixels
    erasing_p: float = 0.5                 # random erasing probability (same box on every frame)
    num_val_ids: int = 0                   # training ids held out for model selection (0: none)
    num_workers: int = 0                   # DataLoader workers
    cache_frames: bool = True              # keep decoded frames in memory (the synthetic set is small)
    synth_ids: int = 270                   # identities when the synthetic set must be generated
                                           # (90 train, 180 test: >= 250 queries per case)
    synth_seed: int = 0                    # generator seed of the synthetic set


@dataclass(frozen=True)
class ModelConfig:
    """The TF-CLIP / X-TFCLIP network (METHOD §2)."""
    arch: str = "ViT-B-16-quickgelu"       # open_clip model name, or a name in model/configs/
    pretrained: str = "openai"             # "openai" (download), a local weights file, or "" (random init)
    pretrained_image_size: int = 224       # square size the pretrained position grid was trained at
    tmd_heads: int = 12                    # heads of the TMD attention (768 / 64 for ViT-B/16)
    ssp_layers: int = 2                    # SSP decoder layers
    ssp_heads: int = 8                     # heads of the SSP attention
    memory_weight_init: float = 0.5        # switch 5: w0, s = sigmoid(w0) ~ 0.62
    classifier_init_std: float = 0.001     # ID classifier weight init
    camera_embed_std: float = 0.02         # SIE truncated-normal std


@dataclass(frozen=True)
class LossConfig:
    """Weights of the combined criterion (METHOD §3)."""
    id_weight: float = 0.25                # each of the three video-level ID losses
    triplet_weight: float = 1.0            # batch-hard triplet on f_img, f_proj, f_tmd
    triplet_margin: float = 0.3
    i2t_weight: float = 1.0                # identity loss on the memory logits
    frame_weight: float = 1.0              # frame-level TMD ID loss (already divided by T)
    label_smoothing: float = 0.1           # epsilon of plain and of online label smoothing
    ols_alpha: float = 0.5                 # a in a*CE + (1-a)*soft-CE


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and schedule (METHOD §3)."""
    seed: int = 0
    epochs: int = 80
    base_lr: float = 5.0e-6
    weight_decay: float = 1.0e-4
    bias_lr_factor: float = 2.0            # biases train at 2x the base LR
    classifier_lr_factor: float = 10.0     # the temporal / frame classifier at 10x
    backbone_lr_factor: float = 1.0        # the CLIP image tower at this x the base LR (its biases
                                           # at this x bias_lr_factor); 1.0 in the method, a small
                                           # pretrained backbone keeps its features with less
    warmup_epochs: int = 10                # linear warm-up ...
    warmup_factor: float = 0.1             # ... from this fraction of the LR
    lr_steps: tuple[int, ...] = (30, 50, 70)  # epochs where the LR is multiplied by lr_gamma
    lr_gamma: float = 0.1
    amp: str = "auto"                      # "auto": bf16 on CUDA when supported, fp16+scaler otherwise, off
                                           # on CPU; "bf16": bf16 autocast also on a CPU with native bf16
                                           # (AVX512-BF16 or AMX; about half the step time of the paper
                                           # network, not bitwise fp32); "off": fp32
    grad_checkpointing: bool = False       # recompute each backbone block's activations in backward
                                           # (open_clip's set_grad_checkpointing): the same losses and
                                           # gradients, less peak memory, one more backbone forward
    optimizer_impl: str = "auto"           # Adam kernels: "auto" (torch's choice: a loop over tensors on
                                           # CPU, foreach on CUDA), "foreach", or "fused" (one kernel; not
                                           # bitwise equal to the loop, ~1e-9 apart after a step)
    compile: bool = False                  # torch.compile the training forward (inductor); not bitwise
                                           # equal to eager (fused kernels round differently)
    max_nonfinite_steps: int = 5           # stop after this many consecutive non-finite losses
    steps_per_epoch: int = 0               # 0: one pass of the identity sampler
    eval_every_epochs: int = 10            # validate every N epochs (and at the last one)
    select_on: str = "val"                 # "val" (held-out training ids) or "test" (outputs say so)
    log_every_steps: int = 20
    device: str = "auto"                   # "auto", "cpu", "cuda"
    num_threads: int = 0                   # torch CPU threads (0: torch's default)


@dataclass(frozen=True)
class EvalConfig:
    """Feature extraction and retrieval evaluation (METHOD §5)."""
    max_rank: int = 50
    batch_size: int = 32                   # tracklets per inference batch
    rerank: bool = False                   # k-reciprocal re-ranking (Zhong et al., CVPR 2017)
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    mask_penalty: float = 100.0            # switch 7's added distance
    mask_attributes: tuple[str, ...] = ("gender", "age", "ethnicity", "body_volume")


@dataclass(frozen=True)
class Config:
    """Everything one run needs. `features` sits at the top so an ablation is a one-line diff."""
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)


# --------------------------------------------------------------------------------------------
# Overrides

def _coerce(old: Any, value: Any, key: str, source: str) -> Any:
    """Bring `value` to the type of `old`, or raise a TypeError naming `key`.

    Accepts what YAML and the command line naturally give: lists for tuples, ints for floats,
    and the strings "true"/"false"/numbers from ``key=value`` overrides.
    """
    want = type(old)
    if isinstance(value, str) and want is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise TypeError(f"{source}: {key!r} expects {want.__name__}, got {value!r} ({exc})") from None
    if want is float and type(value) is int:
        value = float(value)
    if want is tuple and isinstance(value, list):
        value = tuple(value)
    if want is tuple and isinstance(value, tuple) and old:
        inner = type(old[0])
        if inner is float:
            value = tuple(float(v) if type(v) is int else v for v in value)
        if not all(type(v) is inner for v in value):
            raise TypeError(f"{source}: {key!r} expects a list of {inner.__name__}, got {value!r}")
    if type(value) is not want:
        hint = " (write floats such as 3.0e-4 with a dot: YAML reads 3e-4 as a string)" if want is float else ""
        raise TypeError(f"{source}: {key!r} expects {want.__name__}, got {value!r}{hint}")
    return value


def with_override(cfg: Config, key: str, value: Any, source: str = "override") -> Config:
    """Copy of `cfg` with dotted `key` (e.g. ``features.attention_pooling``) set to `value`.

    An unknown key raises KeyError listing the valid names at that level; a value of the wrong
    type raises TypeError naming the key.
    """
    def _set(node: Any, parts: list[str]) -> Any:
        names = [f.name for f in fields(node)]
        if parts[0] not in names:
            raise KeyError(f"{source}: unknown key {key!r}; expected one of {names} at {parts[0]!r}")
        old = getattr(node, parts[0])
        if dataclasses.is_dataclass(old):
            if len(parts) == 1:
                if not isinstance(value, dict):
                    raise TypeError(f"{source}: {key!r} is a section; give a mapping, got {value!r}")
                new = old
                for sub, sub_value in value.items():
                    new = with_override(new, sub, sub_value, f"{source}: {key}")
                return replace(node, **{parts[0]: new})
            return replace(node, **{parts[0]: _set(old, parts[1:])})
        if len(parts) > 1:
            raise KeyError(f"{source}: {key!r}: {parts[0]!r} is a value, not a section")
        return replace(node, **{parts[0]: _coerce(old, value, key, source)})
    return _set(cfg, key.split("."))


def apply_mapping(cfg: Config, mapping: dict, source: str) -> Config:
    """Apply a nested mapping (a parsed YAML preset) as overrides."""
    if not isinstance(mapping, dict):
        raise TypeError(f"{source}: expected a mapping at the top level, got {type(mapping).__name__}")
    for key, value in mapping.items():
        cfg = with_override(cfg, str(key), value, source)
    return cfg


def parse_override(text: str) -> tuple[str, str]:
    """Split ``key=value``; raise ValueError naming the text when there is no '='."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value "
                         "(e.g. features.attention_pooling=false)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


# --------------------------------------------------------------------------------------------
# Presets and variants

def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_preset(name_or_path: str) -> dict:
    """The mapping of a shipped preset name or of a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise KeyError(f"unknown preset {name_or_path!r}; shipped presets: {available_presets()}")
    elif not path.is_file():
        raise FileNotFoundError(f"preset file {path} not found")
    return read_yaml(path)


def read_yaml(path: str | Path) -> Any:
    """The YAML document of `path` ({} when empty); a parse error is a ValueError naming it, a
    missing file a FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


def load_config(preset: str = "paper", variant: str | None = "x_tfclip",
                overrides: Iterable[str | tuple[str, Any]] = ()) -> Config:
    """Defaults, then `preset`, then `variant`, then each override (``"key=value"`` or a pair)."""
    cfg = Config(name=Path(preset).stem)
    cfg = apply_mapping(cfg, read_preset(preset), f"preset {preset!r}")
    if variant is not None:
        if variant not in VARIANTS:
            raise KeyError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        cfg = apply_mapping(cfg, {"features": VARIANTS[variant]}, f"variant {variant!r}")
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        cfg = with_override(cfg, key, value, f"override {key}={value}")
    return cfg


# --------------------------------------------------------------------------------------------
# Serialisation

def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) for YAML/JSON."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value
    return plain(cfg)


def from_dict(mapping: dict, source: str = "config") -> Config:
    """Inverse of `to_dict`; every key is checked as an override would be."""
    return apply_mapping(Config(), mapping, source)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))


def load_config_file(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    return from_dict(read_yaml(path), str(path))


# Keys added after results were first keyed by `config_digest`, each with the value that
# reproduces the behaviour from before it existed. At that value a key is left out of the digest,
# so that feature caches and finished studies keyed before it existed stay valid.
LATER_KEYS: dict[tuple[str, str], Any] = {
    ("train", "grad_checkpointing"): False,
    ("train", "optimizer_impl"): "auto",
    ("train", "compile"): False,
}


def config_digest(cfg: Config) -> str:
    """Short stable hash of the resolved config (used to key caches); see `LATER_KEYS`."""
    mapping = to_dict(cfg)
    for (section, key), value in LATER_KEYS.items():
        if mapping[section][key] == value:
            del mapping[section][key]
    text = json.dumps(mapping, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
