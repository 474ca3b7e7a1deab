"""The CLIP image encoder: open_clip's ViT at a non-square re-ID input, and its pretrained weights.

The tower is created by open_clip's factory (``open_clip.create_model(arch).visual``), never
copied; the architectures of ``model/configs/*.json`` are registered with open_clip so that the
tiny CLIPs are built the same way as ViT-B-16. Only the forward steps are re-implemented here,
because TF-CLIP needs two things open_clip's forward does not give: an embedding added to the
class token before the transformer (SIE camera and, with switch 4, frame index), and *all* tokens
after ``ln_post`` together with their projection (METHOD §2).

Pretrained weights (``model.pretrained``): ``"openai"`` (open_clip downloads them), a local file
(an OpenAI JIT archive, an OpenAI state dict, an open_clip checkpoint ``{"state_dict": ...}`` or
bare state dict, or ``.safetensors``), or ``""`` for random initialisation. The square position
grid of the checkpoint is resized to this model's (H/p, W/p) grid exactly as METHOD §6 says.
"""
from __future__ import annotations

import logging
import math
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
LOCAL_ARCHS: tuple[str, ...] = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


def register_local_configs() -> None:
    """Make the architectures of ``model/configs/*.json`` known to open_clip's factory (once)."""
    if not set(LOCAL_ARCHS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


register_local_configs()


def resize_position_embedding(pos: Tensor, grid_hw: tuple[int, int], mode: str) -> Tensor:
    """Resize a ViT position table (1 + g*g, D) to (1 + gh*gw, D), keeping the class row (METHOD §6).

    The g x g grid (row-major, height first) is reshaped to (1, D, g, g), resized with
    ``F.interpolate(mode, align_corners=False, antialias=False)`` to (gh, gw) and flattened
    row-major again. `mode` is "bicubic" (switch 1 on) or "bilinear" (off). Computed in fp32.
    """
    rows, dim = pos.shape[0] - 1, pos.shape[1]
    g = math.isqrt(rows)
    if g * g != rows:
        raise ValueError(f"position table has {rows} grid rows, not a square grid")
    grid = pos[1:].float().reshape(1, g, g, dim).permute(0, 3, 1, 2)          # (1, D, g, g)
    grid = F.interpolate(grid, size=grid_hw, mode=mode, align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(grid_hw[0] * grid_hw[1], dim)     # (gh*gw, D)
    return torch.cat([pos[:1].float(), grid], dim=0)


def _is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip (OpenAI's released ``*.pt``): it holds code, not only tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _resolve_source(source: str, arch: str) -> Path:
    """The local file behind `source`: "openai" is downloaded through open_clip, else a path."""
    if source == "openai":
        pretrained_cfg = open_clip.get_pretrained_cfg(arch, "openai")
        if not pretrained_cfg:
            with_openai = [m for m, tag in open_clip.list_pretrained() if tag == "openai"]
            raise ValueError(f"model.pretrained='openai' but open_clip has no OpenAI weights for "
                             f"model.arch={arch!r}; archs with OpenAI weights: {with_openai}")
        try:
            return Path(open_clip.download_pretrained(pretrained_cfg))
        except Exception as exc:  # network errors come in many types
            raise RuntimeError(f"could not download OpenAI weights for model.arch={arch!r} ({exc}); "
                               "offline, set model.pretrained to a local weights file "
                               "(OpenAI .pt, open_clip checkpoint or .safetensors) or '' for "
                               "random initialisation") from exc
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained={source!r}: file not found; expected 'openai', "
                                "a local weights file, or '' for random initialisation")
    return path


def read_visual_state_dict(source: str, arch: str) -> dict[str, Tensor]:
    """The image-tower tensors of a CLIP checkpoint, keyed as in open_clip's VisionTransformer.

    Accepts an OpenAI JIT archive (loaded with ``torch.jit.load`` on CPU), an OpenAI or open_clip
    state dict (bare or under ``"state_dict"``, ``module.`` prefixes stripped), or a
    ``.safetensors`` file. Keys under ``visual.`` are taken (prefix removed); a bare image tower
    (``conv1.weight`` at the top level) is taken whole. Floating tensors come back as fp32.
    """
    path = _resolve_source(source, arch)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path), device="cpu")
    elif _is_torchscript_archive(path):
        with warnings.catch_warnings():      # torch marks TorchScript deprecated; OpenAI ships it
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"model.pretrained={source!r}: not a weights file that loads with "
                             f"torch.load(weights_only=True) ({exc})") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"model.pretrained={source!r}: expected a state dict of tensors "
                         f"(bare or under 'state_dict'), got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if not visual and "conv1.weight" in state:
        visual = dict(state)
    if not visual:
        raise ValueError(f"model.pretrained={source!r}: no image-tower weights found (expected keys "
                         f"'visual.conv1.weight', ... or a bare tower); first keys: {list(state)[:5]}")
    return {k: v.float() if v.is_floating_point() else v for k, v in visual.items()}


def _listing(items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class CLIPBackbone(nn.Module):
    """open_clip ViT image tower at input (H, W); returns all tokens and their projection.

    `interpolation` ("bicubic" with switch 1, else "bilinear") is how a pretrained square
    position grid is resized to (H/p, W/p) when weights are loaded. `grad_checkpointing`
    (``train.grad_checkpointing``) keeps only each transformer block's input for backward and
    recomputes the rest there (open_clip's ``set_grad_checkpointing``, non-reentrant
    ``torch.utils.checkpoint``): the same values and gradients, less memory, one more forward.
    """

    def __init__(self, arch: str, image_size_hw: tuple[int, int], interpolation: str,
                 grad_checkpointing: bool = False):
        super().__init__()
        if arch not in open_clip.list_models():
            raise KeyError(f"model.arch={arch!r} is neither an open_clip model nor one of "
                           f"model/configs/ {list(LOCAL_ARCHS)}; e.g. 'ViT-B-16-quickgelu'")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        height, width = image_size_hw
        with quiet_open_clip():
            visual = open_clip.create_model(arch, pretrained=None, force_image_size=(height, width)).visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None \
                or visual.pool_type != "tok" or visual.positional_embedding.shape[0] < 2:
            raise ValueError(f"model.arch={arch!r}: expected a plain CLIP ViT with a class token "
                             f"and a learned position table, got {type(visual).__name__}")
        patch_h, patch_w = visual.patch_size
        if height % patch_h or width % patch_w:
            raise ValueError(f"data.image_size_hw={list(image_size_hw)} must be a multiple of the "
                             f"patch size {patch_h}x{patch_w} of model.arch={arch!r}")
        visual.set_grad_checkpointing(grad_checkpointing)
        self.visual = visual
        self.arch = arch
        self.interpolation = interpolation
        self.image_size_hw: tuple[int, int] = (height, width)
        self.grid_hw: tuple[int, int] = (height // patch_h, width // patch_w)
        self.patch_size: int = patch_h
        self.width: int = visual.transformer.width
        self.embed_dim: int = visual.output_dim

    def forward(self, images: Tensor, class_offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W), class-token offset (N, width) or None -> tokens (N, 1+L, width), projected (N, 1+L, E).

        L = (H/p)(W/p). Tokens are taken after ``ln_post``; the projection is ``tokens @ proj``.
        """
        v = self.visual
        x = v.conv1(images)                                       # (N, width, H/p, W/p)
        N, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)                          # (N, L, width), row-major
        cls = v.class_embedding.to(x.dtype).expand(N, C)          # (N, width)
        if class_offset is not None:
            cls = cls + class_offset.to(x.dtype)
        x = torch.cat([cls.unsqueeze(1), x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_post(v.transformer(v.ln_pre(x)))                 # (N, 1+L, width)
        return x, x @ v.proj.to(x.dtype)                          # (N, 1+L, E)

    def load_pretrained(self, source: str, pretrained_image_size: int) -> None:
        """Load the image tower of `source` (see `read_visual_state_dict`), resizing its position grid.

        The pretrained grid size comes from the checkpoint (sqrt of its grid rows);
        `pretrained_image_size` (``model.pretrained_image_size``) is only checked against it. A
        checkpoint of another architecture raises ValueError naming the keys that differ.
        """
        if source == "openai" and not open_clip.get_model_config(self.arch).get("quick_gelu"):
            logger.warning("model.arch=%r uses GELU but OpenAI weights were trained with QuickGELU "
                           "(METHOD §6); use the '-quickgelu' variant", self.arch)
        state = read_visual_state_dict(source, self.arch)
        own = self.visual.state_dict()
        missing = sorted(own.keys() - state.keys())
        unexpected = sorted(state.keys() - own.keys())
        mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                      for k in sorted(own.keys() & state.keys())
                      if state[k].shape != own[k].shape
                      and not (k == "positional_embedding" and state[k].shape[1:] == own[k].shape[1:])]
        if missing or unexpected or mismatched:
            problems = [f"{name}: {_listing(keys)}" for name, keys in
                        (("missing", missing), ("unexpected", unexpected),
                         ("shape (checkpoint vs model)", mismatched)) if keys]
            raise ValueError(f"model.pretrained={source!r} does not match model.arch={self.arch!r}; "
                             + "; ".join(problems))
        state["positional_embedding"] = self._position_table(state["positional_embedding"], source,
                                                             pretrained_image_size)
        self.visual.load_state_dict(state)
        logger.info("loaded %s image tower from %s (position grid -> %dx%d, %s)", self.arch, source,
                    *self.grid_hw, self.interpolation)

    def _position_table(self, pos: Tensor, source: str, pretrained_image_size: int) -> Tensor:
        """The checkpoint's position table brought to this model's grid."""
        rows = pos.shape[0] - 1
        g = math.isqrt(rows)
        if g * g != rows:
            if rows == self.grid_hw[0] * self.grid_hw[1]:
                return pos                                        # already at this grid
            raise ValueError(f"model.pretrained={source!r}: its position table has {rows} grid rows, "
                             f"neither a square grid nor this model's {self.grid_hw[0]}x{self.grid_hw[1]}")
        expected = pretrained_image_size // self.patch_size
        if g != expected:
            logger.warning("model.pretrained_image_size=%d implies a %dx%d position grid but %s has "
                           "%dx%d; resizing from the checkpoint's grid", pretrained_image_size,
                           expected, expected, source, g, g)
        return resize_position_embedding(pos, self.grid_hw, self.interpolation)


class _QuietFactory(logging.Filter):
    """Drops open_clip's factory chatter while it builds a model for us: its INFO lines (on the
    root logger) and its "No pretrained weights loaded ... initialized randomly" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "open_clip" not in Path(record.pathname).parts:
            return True
        return record.levelno >= logging.WARNING and "No pretrained weights" not in record.getMessage()


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's factory (`_QuietFactory`) inside the block; other records pass.

    Its chatter would mislead: a re-ID tower gets its weights afterwards from
    `CLIPBackbone.load_pretrained`, and random initialisation is what tiny-CLIP pretraining wants.
    """
    quiet, root = _QuietFactory(), logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
