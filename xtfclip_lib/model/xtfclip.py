"""The assembled TF-CLIP / X-TFCLIP network (METHOD §2, §4, §6).

Data flow for a batch of B tracklets of T frames:

    clips (B, T, 3, H, W) --CLIP ViT, SIE camera (+ frame) embedding on the class token-->
        tokens (B, T, 1+L, D), projected tokens (B, T, 1+L, E)
    class tokens  --pool over T--> f_img (B, D);  projected class tokens --pool over T--> f_proj (B, E)
    tokens.detach() --TMD--> frame features (B, T, D), f_tmd (B, D)
    projected tokens --pool over T per token--> video tokens (B, 1+L, E) --SSP(M)--> M' (B, K, E)
    i2t logits = f_proj . M'^T ;  each feature --neck--> bias-free ID classifier

Switches are read once, in ``__init__``, where each picks a module (mean or attention pooling,
BatchNorm or instance-norm neck, additive or learned memory weighing, a frame embedding or
``nn.Identity``); ``forward`` has no feature branches.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from xtfclip_lib.config import FeatureConfig, ModelConfig
from xtfclip_lib.model.backbone import CLIPBackbone
from xtfclip_lib.model.neck import make_neck
from xtfclip_lib.model.pooling import make_pool
from xtfclip_lib.model.ssp import SequenceSpecificPrompt, make_memory_update
from xtfclip_lib.model.tmd import TemporalMemoryDiffusion

# Attribute name of the ONE bias-free classifier that the frame-level and the video-level TMD
# features share (METHOD §6); the optimiser trains it at ``train.classifier_lr_factor`` (§3).
FRAME_CLASSIFIER = "classifier_tmd"


class _InitStreams:
    """``streams(name, make)`` runs `make()` with the global torch generator seeded from
    (base, name) and restores the generator afterwards, so what one module draws never shifts
    what another draws."""

    def __init__(self, base: int):
        self.base = base

    def __call__(self, name: str, make):
        digest = hashlib.sha256(f"{self.base}:{name}".encode()).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            return make()


class FrameEmbedding(nn.Module):
    """Learned per-frame-index embedding added to each frame's class token (switch 4); starts at zero."""

    def __init__(self, num_frames: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_frames, width))

    def forward(self, class_offset: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D) plus the embedding of each frame index."""
        if class_offset.shape[1] != self.weight.shape[0]:
            raise ValueError(f"clips have T={class_offset.shape[1]} frames but the frame embedding "
                             f"was built for data.num_frames={self.weight.shape[0]}")
        return class_offset + self.weight


def check_input_size(state_dict: dict, image_size_hw: tuple[int, int]) -> None:
    """Raise ValueError when an XTFCLIP checkpoint was trained at another input size (METHOD §7).

    Reads the ``input_size_hw`` buffer every XTFCLIP state dict carries, so a size mismatch is
    reported by name instead of as a position-table shape error deep inside the backbone.
    """
    saved = state_dict.get("input_size_hw")
    if saved is None:
        raise ValueError("checkpoint has no 'input_size_hw' entry: not an XTFCLIP state dict "
                         f"(first keys: {list(state_dict)[:5]})")
    saved_hw = tuple(int(v) for v in saved)
    if saved_hw != tuple(image_size_hw):
        raise ValueError(f"checkpoint was trained at {saved_hw[0]}x{saved_hw[1]} input but this model "
                         f"is built for {image_size_hw[0]}x{image_size_hw[1]} (data.image_size_hw); "
                         f"set data.image_size_hw=[{saved_hw[0]}, {saved_hw[1]}] to use it")


def check_camera_ids(camids: Tensor, num_cameras: int) -> None:
    """Raise ValueError when a camera id lies outside [0, num_cameras).

    Reading the values syncs with the device, so the training loop calls this on the CPU-side
    batch before the transfer, and `XTFCLIP` itself only checks CPU tensors and eval batches.
    """
    if camids.numel() and (int(camids.min()) < 0 or int(camids.max()) >= num_cameras):
        raise ValueError(f"camera ids must lie in [0, {num_cameras}) (num_cameras), got "
                         f"{sorted(set(camids.tolist()))}")


class XTFCLIP(nn.Module):
    """TF-CLIP with the X-TFCLIP extensions chosen by `features`.

    Train mode: ``forward(clips, camids)`` returns a dict of features and logits (see
    `forward`). Eval mode: the test feature ``[f_img, f_proj, f_tmd]`` taken before the necks,
    (B, 2D + E). ``set_memory`` must be called (with `memory_features` of the training set)
    before training.
    """

    def __init__(self, backbone: CLIPBackbone, num_classes: int, num_cameras: int, num_frames: int,
                 model_cfg: ModelConfig, features: FeatureConfig):
        super().__init__()
        if num_classes < 1 or num_cameras < 1 or num_frames < 1:
            raise ValueError(f"need num_classes, num_cameras, num_frames >= 1, got "
                             f"{num_classes}, {num_cameras}, {num_frames}")
        D, E, K = backbone.width, backbone.embed_dim, num_classes
        self.num_classes, self.num_cameras, self.num_frames = K, num_cameras, num_frames
        self.backbone = backbone
        # Every module below draws its initial weights from its own stream, seeded from one draw
        # of the global generator and the module's name: flipping a switch changes the modules it
        # names and leaves the initial weights of every other module as they were (a same-seed
        # ablation is paired), and the global generator advances the same for every setting.
        init = _InitStreams(int(torch.randint(0, 2**62, (1,))))
        attention, inorm = features.attention_pooling, features.instance_norm_neck
        # SIE camera embedding (coefficient 1.0) and, with switch 4, a frame embedding: class token only
        self.camera_embed = init("camera_embed", lambda: nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_cameras, D), std=model_cfg.camera_embed_std)))
        self.frame_embed = init("frame_embed", lambda: FrameEmbedding(num_frames, D)
                                if features.frame_pos_embed else nn.Identity())
        # every pooling site has its own module (switch 2)
        self.pool_img = init("pool_img", lambda: make_pool(D, attention))
        self.pool_proj = init("pool_proj", lambda: make_pool(E, attention))
        self.pool_video = init("pool_video", lambda: make_pool(E, attention))
        pool_tokens = init("tmd.pool_tokens", lambda: make_pool(D, attention))
        pool_frames = init("tmd.pool_frames", lambda: make_pool(D, attention))
        self.tmd = init("tmd", lambda: TemporalMemoryDiffusion(D, model_cfg.tmd_heads, pool_tokens=pool_tokens,
                                                               pool_frames=pool_frames))
        self.ssp = init("ssp", lambda: SequenceSpecificPrompt(E, model_cfg.ssp_layers, model_cfg.ssp_heads))
        self.memory_update = init("memory_update", lambda: make_memory_update(
            features.learnable_memory_weight, model_cfg.memory_weight_init))
        self.neck_img = init("neck_img", lambda: make_neck(D, inorm))
        self.neck_proj = init("neck_proj", lambda: make_neck(E, inorm))
        self.neck_frame = init("neck_frame", lambda: make_neck(D, inorm))
        self.neck_tmd = init("neck_tmd", lambda: make_neck(D, inorm))

        def classifier(dim: int) -> nn.Linear:
            layer = nn.Linear(dim, K, bias=False)
            nn.init.normal_(layer.weight, std=model_cfg.classifier_init_std)
            return layer
        self.classifier_img = init("classifier_img", lambda: classifier(D))
        self.classifier_proj = init("classifier_proj", lambda: classifier(E))
        # ONE classifier for the frame-level and the video-level TMD features, as in the published
        # TF-CLIP/X-TFCLIP code (METHOD §6); their necks stay separate. Trained at 10x LR.
        self.classifier_tmd = init("classifier_tmd", lambda: classifier(D))
        # CLIP-Memory: fixed during training, saved in checkpoints
        self.register_buffer("memory", torch.zeros(K, E))
        self.register_buffer("memory_set", torch.tensor(False))
        self._memory_is_set = False       # mirrors the buffer: reading a GPU buffer would sync
        self.register_buffer("input_size_hw", torch.tensor(backbone.image_size_hw))

    # ---------------------------------------------------------------------------------------
    def forward(self, clips: Tensor, camids: Tensor) -> dict[str, Tensor] | Tensor:
        """clips (B, T, 3, H, W), camids (B,) -> train: dict; eval: test feature (B, 2D + E).

        The train dict holds ``f_img`` (B, D), ``f_proj`` (B, E), ``f_tmd`` (B, D) (before the
        necks), ``logits_img``, ``logits_proj``, ``logits_tmd``, ``i2t_logits`` (B, K) and
        ``frame_logits`` (B, T, K).
        """
        B, T = clips.shape[:2]
        tokens, proj_tokens = self._encode(clips, camids)       # (B, T, 1+L, D), (B, T, 1+L, E)
        f_img = self.pool_img(tokens[:, :, 0], dim=1)            # (B, D)
        f_proj = self.pool_proj(proj_tokens[:, :, 0], dim=1)     # (B, E)
        frame_tmd, f_tmd = self.tmd(tokens.detach())             # (B, T, D), (B, D)
        if not self.training:
            return torch.cat([f_img, f_proj, f_tmd], dim=1)      # (B, 2D + E)
        frame_logits = self.classifier_tmd(self.neck_frame(frame_tmd.flatten(0, 1)))  # (B*T, K)
        return {
            "f_img": f_img, "f_proj": f_proj, "f_tmd": f_tmd,
            "logits_img": self.classifier_img(self.neck_img(f_img)),
            "logits_proj": self.classifier_proj(self.neck_proj(f_proj)),
            "logits_tmd": self.classifier_tmd(self.neck_tmd(f_tmd)),
            "frame_logits": frame_logits.reshape(B, T, -1),
            "i2t_logits": self._i2t_logits(f_proj, proj_tokens),
        }

    def _encode(self, clips: Tensor, camids: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone with the camera (+ frame) embedding on each frame's class token."""
        B, T, C, H, W = self._check_clips(clips)
        if camids.shape != (B,):
            raise ValueError(f"camids must have shape ({B},), got {tuple(camids.shape)}")
        # no device sync inside a training step: the engine checks the CPU-side batch instead
        if (camids.device.type == "cpu" or not self.training) and not torch.compiler.is_compiling():
            check_camera_ids(camids, self.num_cameras)
        offset = self.camera_embed[camids].unsqueeze(1).expand(B, T, -1)   # (B, T, D)
        offset = self.frame_embed(offset)                                  # (B, T, D)
        tokens, proj = self.backbone(clips.reshape(B * T, C, H, W), offset.reshape(B * T, -1))
        return tokens.reshape(B, T, *tokens.shape[1:]), proj.reshape(B, T, *proj.shape[1:])

    def _i2t_logits(self, f_proj: Tensor, proj_tokens: Tensor) -> Tensor:
        """f_proj (B, E), projected tokens (B, T, 1+L, E) -> f_proj . M'^T (B, K), plain dot product.

        SSP's visual input is NOT detached: the I2T loss trains the backbone (METHOD §6).
        """
        if not self._memory_is_set:
            raise RuntimeError("CLIP-Memory is not set: call model.set_memory(M) with the per-identity "
                               "means of model.memory_features(...) before training (METHOD §2)")
        B = f_proj.shape[0]
        video = self.pool_video(proj_tokens, dim=1)                         # (B, 1+L, E)
        memory = self.memory.unsqueeze(0).expand(B, -1, -1)                 # (B, K, E)
        memory = self.memory_update(memory, self.ssp(memory, video))        # (B, K, E)
        return torch.einsum("be,bke->bk", f_proj, memory)

    def _check_clips(self, clips: Tensor) -> torch.Size:
        if clips.dim() != 5:
            raise ValueError(f"clips must be (B, T, 3, H, W), got shape {tuple(clips.shape)}")
        size_hw = tuple(int(v) for v in self.input_size_hw)
        if tuple(clips.shape[-2:]) != size_hw:
            raise ValueError(f"clips are {clips.shape[-2]}x{clips.shape[-1]} but the model was built "
                             f"for {size_hw[0]}x{size_hw[1]} input (data.image_size_hw)")
        return clips.shape

    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def memory_features(self, clips: Tensor, camids: Tensor | None = None) -> Tensor:
        """clips (B, T, 3, H, W) -> (B, E): projected class token averaged over T.

        No camera or frame embedding and no pooling module: CLIP-Memory comes from the
        pretrained backbone as is (METHOD §6). `camids` is accepted and ignored so callers can
        pass a batch as they would to ``forward``. Call in eval mode.
        """
        B, T, C, H, W = self._check_clips(clips)
        _, proj = self.backbone(clips.reshape(B * T, C, H, W))              # (B*T, 1+L, E)
        return proj[:, 0].reshape(B, T, -1).float().mean(dim=1)

    def set_memory(self, memory: Tensor) -> None:
        """Store the fixed CLIP-Memory M (num_classes, E): per-identity means of `memory_features`."""
        if tuple(memory.shape) != tuple(self.memory.shape):
            raise ValueError(f"memory must have shape {tuple(self.memory.shape)} "
                             f"(num_classes, embed_dim), got {tuple(memory.shape)}")
        self.memory.copy_(memory.detach())
        self.memory_set.fill_(True)
        self._memory_is_set = True

    def check_state_dict(self, state_dict: dict) -> None:
        """Raise ValueError naming what differs when `state_dict` was saved by another setting."""
        check_input_size(state_dict, tuple(int(v) for v in self.input_size_hw))
        saved = state_dict.get("memory")
        if saved is not None and saved.shape[0] != self.num_classes:
            raise ValueError(f"checkpoint has {saved.shape[0]} training identities, this model "
                             f"{self.num_classes} (num_classes)")
        saved = state_dict.get("frame_embed.weight")
        if saved is not None and isinstance(self.frame_embed, FrameEmbedding) \
                and saved.shape[0] != self.num_frames:
            raise ValueError(f"checkpoint was trained with T={saved.shape[0]} frames, this model "
                             f"with {self.num_frames} (data.num_frames)")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict` after `check_state_dict` (sizes are named, not shape errors)."""
        self.check_state_dict(state_dict)
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._memory_is_set = bool(self.memory_set)
        return result
