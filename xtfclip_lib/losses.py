"""Training losses of TF-CLIP / X-TFCLIP (METHOD §3, §4 switch 3, §6).

`Criterion` combines, with the weights of ``cfg.loss``:

- ID losses on the three video-level heads (``logits_img``, ``logits_proj``, ``logits_tmd``),
- the I2T identity loss on the CLIP-Memory logits,
- batch-hard triplet losses on ``f_img``, ``f_proj``, ``f_tmd`` (Euclidean, unnormalised),
- the frame-level ID loss on per-frame TMD logits (each frame labelled with its tracklet's
  identity), divided by T.

With switch 3 every ID loss is Online Label Smoothing: ONE state shared by the three video-level
heads and I2T, and its own state for the frame-level loss (as in the published X-TFCLIP
training); without it, cross-entropy with label smoothing 0.1. All losses are computed in fp32,
also under bf16 autocast.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from xtfclip_lib.config import FeatureConfig, LossConfig

__all__ = ["Criterion", "CrossEntropyLabelSmooth", "OnlineLabelSmoothing", "TripletLoss", "make_id_loss"]


class OnlineLabelSmoothing(nn.Module):
    """Online Label Smoothing (Zhang et al. 2021, "Delving Deep into Label Smoothing"), METHOD §6.

    ``soft_labels`` S is K x K; column y is the target distribution of class y. It starts as
    1 - eps on the diagonal and eps / (K - 1) elsewhere. The loss is
    ``alpha * CE(logits, y) + (1 - alpha) * mean_i sum_k -S[k, y_i] log_softmax(logits_i)[k]``.
    In training mode, every sample whose argmax equals its label adds its softmax vector to column
    y of ``accumulator`` and 1 to ``counts[y]``; `next_epoch` turns the column means into the
    next S (a class never classified correctly gets an all-zero column, so its soft term
    vanishes for one epoch, as published). State lives in fp32 buffers: it is in the state dict,
    and bf16 probabilities never meet an fp32 ``index_add_``.
    """

    def __init__(self, num_classes: int, alpha: float = 0.5, smoothing: float = 0.1):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"OnlineLabelSmoothing needs num_classes >= 2, got {num_classes}")
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= smoothing < 1.0:
            raise ValueError(f"need 0 <= alpha <= 1 and 0 <= smoothing < 1, got alpha={alpha}, "
                             f"smoothing={smoothing} (loss.ols_alpha, loss.label_smoothing)")
        self.num_classes, self.alpha, self.smoothing = num_classes, alpha, smoothing
        soft = torch.full((num_classes, num_classes), smoothing / (num_classes - 1))
        soft.fill_diagonal_(1.0 - smoothing)
        self.register_buffer("soft_labels", soft)
        self.register_buffer("accumulator", torch.zeros(num_classes, num_classes))
        self.register_buffer("counts", torch.zeros(num_classes))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (N, K), labels (N,) -> scalar fp32 loss; accumulates in training mode."""
        log_probs = F.log_softmax(logits.float(), dim=1)                     # (N, K)
        if self.training:
            self._accumulate(log_probs.detach().exp(), labels)
        hard = F.nll_loss(log_probs, labels)
        soft = -(self.soft_labels[:, labels].t() * log_probs).sum(dim=1).mean()
        return self.alpha * hard + (1.0 - self.alpha) * soft

    @torch.no_grad()
    def _accumulate(self, probs: Tensor, labels: Tensor) -> None:
        correct = probs.argmax(dim=1) == labels
        self.accumulator.index_add_(1, labels[correct], probs[correct].t())
        self.counts.index_add_(0, labels[correct], torch.ones_like(labels[correct], dtype=self.counts.dtype))

    @torch.no_grad()
    def next_epoch(self) -> None:
        """S <- accumulator / max(counts, 1) column by column; reset accumulator and counts.

        Under torch.distributed the accumulators of all processes are summed first, so every
        process moves to the same S.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.accumulator)
            dist.all_reduce(self.counts)
        self.soft_labels.copy_(self.accumulator / self.counts.clamp(min=1.0))
        self.accumulator.zero_()
        self.counts.zero_()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, smoothing={self.smoothing}"


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against (1 - eps) one-hot + eps / K uniform (TF-CLIP's ID loss, switch 3 off).

    Has the same ``forward(logits, labels)`` / ``next_epoch()`` interface as
    `OnlineLabelSmoothing`; its `next_epoch` does nothing.
    """

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (N, K), labels (N,) -> scalar fp32 loss."""
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.smoothing)

    def next_epoch(self) -> None:
        """Nothing to update: the targets are fixed."""

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on unnormalised features with Euclidean distance (METHOD §6).

    For each anchor: hardest positive = farthest same-identity sample, hardest negative = closest
    other-identity sample; loss = mean(relu(d_ap - d_an + margin)).
    """

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """features (N, D), labels (N,) -> scalar fp32 loss."""
        return self.from_hardest(*self.hardest(features, labels))

    @staticmethod
    def hardest(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) distances of each anchor to its hardest positive and its hardest negative."""
        x = features.float()
        squared = (x * x).sum(dim=1)
        dist = (squared[:, None] + squared[None, :] - 2.0 * x @ x.t()).clamp(min=1e-12).sqrt()  # (N, N)
        same = labels[:, None] == labels[None, :]
        hardest_pos = dist.masked_fill(~same, float("-inf")).max(dim=1).values
        hardest_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
        return hardest_pos, hardest_neg

    def from_hardest(self, hardest_pos: Tensor, hardest_neg: Tensor) -> Tensor:
        """mean(relu(d_ap - d_an + margin)) from `hardest`'s distances."""
        return F.relu(hardest_pos - hardest_neg + self.margin).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


def make_id_loss(loss_cfg: LossConfig, online: bool, num_classes: int) -> nn.Module:
    """`OnlineLabelSmoothing` when `online` (switch 3), else `CrossEntropyLabelSmooth`."""
    if online:
        return OnlineLabelSmoothing(num_classes, loss_cfg.ols_alpha, loss_cfg.label_smoothing)
    return CrossEntropyLabelSmooth(loss_cfg.label_smoothing)


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == labels).float().mean()


class Criterion(nn.Module):
    """The combined training loss (METHOD §3) over the train-mode output dict of `XTFCLIP`.

    ``criterion(out, labels)`` returns ``(total, terms)``: `total` is the weighted sum to
    back-propagate, `terms` plain floats: ``loss`` (the total), ``id_img``, ``id_proj``,
    ``id_tmd``, ``i2t``, ``frame`` (already divided by T), ``triplet_img``, ``triplet_proj``,
    ``triplet_tmd``, the accuracies ``acc_img``, ``acc_proj``, ``acc_tmd``, ``acc_i2t``,
    ``acc_frame``, and the mean hardest-positive / hardest-negative distances that the triplet
    terms see, ``dist_pos_img`` / ``dist_neg_img`` (and ``_proj``, ``_tmd``). Call `next_epoch` at the end of every training epoch.
    """

    def __init__(self, loss_cfg: LossConfig, features: FeatureConfig, num_classes: int, num_frames: int):
        super().__init__()
        self.cfg = loss_cfg
        self.num_frames = num_frames
        # one state for the three video-level heads and I2T, one for the frame-level loss
        self.id_loss = make_id_loss(loss_cfg, features.online_label_smoothing, num_classes)
        self.frame_id_loss = make_id_loss(loss_cfg, features.online_label_smoothing, num_classes)
        self.triplet = TripletLoss(loss_cfg.triplet_margin)

    def forward(self, out: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """out: XTFCLIP's train dict for B tracklets; labels (B,) -> (total loss, named terms)."""
        B, T = out["frame_logits"].shape[:2]
        if T != self.num_frames or labels.shape != (B,):
            raise ValueError(f"expected frame_logits (B, {self.num_frames}, K) and labels ({B},), got "
                             f"{tuple(out['frame_logits'].shape)} and {tuple(labels.shape)}")
        frame_labels = labels.repeat_interleave(T)                             # (B*T,) each label T times
        frame_logits = out["frame_logits"].flatten(0, 1)                       # (B*T, K)
        terms = {
            "id_img": self.id_loss(out["logits_img"], labels),
            "id_proj": self.id_loss(out["logits_proj"], labels),
            "id_tmd": self.id_loss(out["logits_tmd"], labels),
            "i2t": self.id_loss(out["i2t_logits"], labels),
            "frame": self.frame_id_loss(frame_logits, frame_labels) / T,
        }
        hardest = {name: self.triplet.hardest(out[f"f_{name}"], labels) for name in ("img", "proj", "tmd")}
        for name, (pos, neg) in hardest.items():
            terms[f"triplet_{name}"] = self.triplet.from_hardest(pos, neg)
        c = self.cfg
        total = (c.id_weight * (terms["id_img"] + terms["id_proj"] + terms["id_tmd"])
                 + c.triplet_weight * (terms["triplet_img"] + terms["triplet_proj"] + terms["triplet_tmd"])
                 + c.i2t_weight * terms["i2t"] + c.frame_weight * terms["frame"])
        with torch.no_grad():
            terms |= {"acc_img": _accuracy(out["logits_img"], labels),
                      "acc_proj": _accuracy(out["logits_proj"], labels),
                      "acc_tmd": _accuracy(out["logits_tmd"], labels),
                      "acc_i2t": _accuracy(out["i2t_logits"], labels),
                      "acc_frame": _accuracy(frame_logits, frame_labels)}
            # what batch-hard triplet sees: a collapsing embedding drives both towards zero
            for name, (pos, neg) in hardest.items():
                terms |= {f"dist_pos_{name}": pos.mean(), f"dist_neg_{name}": neg.mean()}
            names = ["loss", *terms]
            values = torch.stack([total.detach(), *(v.detach().float() for v in terms.values())])
        return total, dict(zip(names, values.tolist()))      # one device sync for all terms

    def next_epoch(self) -> None:
        """End of a training epoch: online label smoothing moves to its next soft labels."""
        self.id_loss.next_epoch()
        self.frame_id_loss.next_epoch()
