"""`PretrainConfig`: every option of tiny-CLIP pretraining that is not input, output or safety.

One frozen dataclass, so that the command line's ``--set KEY=VALUE`` goes through the same dotted
override path as a training config (`xtfclip_lib.config.with_override`) and ``--help`` shows the
real defaults. Where the data come from, where the checkpoint goes, ``overwrite``, ``progress``
and the wall-clock ceiling ``max_seconds`` stay keyword arguments of `pretrain_tiny_clip`: they
never change what is computed.
"""
from __future__ import annotations

from dataclasses import dataclass

COLOUR_WORDS = ("named", "coarse", "none")   # how captions say clothing colours (`caption_colours`)


@dataclass(frozen=True)
class PretrainConfig:
    """What `pretrain_tiny_clip` computes; the same values (and data) give the same bytes.

    The sidecar's ``settings`` record these fields in this order, with ``max_seconds`` after
    ``steps`` and the thread count actually used (``torch_threads``) in place of ``num_threads``.
    """
    arch: str = "tiny-clip"            # open_clip model name or one of model/configs/*.json
    image_size: int = 64               # square crop size in pixels
    # The budget (METHOD §8): steps, never seconds, at a fixed thread count (`num_threads`), so
    # that the same seed gives the same backbone on an idle or a busy machine of any size. 150 steps
    # (200 before, 400 before that): the features already differ between people, re-ID training from
    # them reaches the same R1 as from 200 steps, and the untrained network scores well under half of
    # the trained one (METHOD §8); from 200 steps it scored just over half on generator 1.4.0's set.
    steps: int = 150
    batch_size: int = 48               # identities (distinct captions) per step
    frames_per_tracklet: int = 1       # crops per identity per step; ClipLoss is averaged over them
    lr: float = 1e-3                   # peak learning rate of AdamW (5 % warm-up, cosine decay)
    weight_decay: float = 0.1          # on matrices only
    caption_dropout: float = 0.3       # chance of leaving out each optional caption phrase
    seed: int = 0                      # initialisation, sampling and augmentation
    num_eval_ids: int = 12             # training identities held out for zero-shot retrieval
    crops_per_tracklet: int = 8        # evenly spaced frames decoded per tracklet
    num_threads: int | None = 2        # torch CPU threads while pretraining (None: as set)
    colour_words: str = "coarse"       # "named", "coarse" or "none" (`caption_colours`)

    def validate(self) -> None:
        """Raise ValueError naming the first option out of range."""
        steps = self.steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps={steps!r}; expected a positive whole number of pretraining steps")
        if self.colour_words not in COLOUR_WORDS:
            raise ValueError(f"colour_words={self.colour_words!r}; expected one of {COLOUR_WORDS}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads!r}; expected a positive thread count or None")
        if self.batch_size < 2 or self.frames_per_tracklet < 1 or not 0 <= self.caption_dropout < 1:
            raise ValueError(f"batch_size={self.batch_size!r} (>= 2), frames_per_tracklet="
                             f"{self.frames_per_tracklet!r} (>= 1) or caption_dropout="
                             f"{self.caption_dropout!r} (0 <= p < 1) is out of range")
