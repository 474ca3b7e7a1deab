"""Losses: online label smoothing by hand over two epochs, triplet by hand, the combined criterion."""
from __future__ import annotations

from math import log, sqrt

import pytest
import torch
from torch import nn

from xtfclip_lib.config import LossConfig, load_config
from xtfclip_lib.losses import (CrossEntropyLabelSmooth, Criterion, OnlineLabelSmoothing,
                                TripletLoss)

# softmax(log p) = p: four samples of a 3-class problem; class 2 is never classified correctly
PROBS = torch.tensor([[0.7, 0.2, 0.1],    # label 0, correct
                      [0.5, 0.3, 0.2],    # label 0, correct
                      [0.2, 0.6, 0.2],    # label 1, correct
                      [0.6, 0.3, 0.1]])   # label 2, wrong
LABELS = torch.tensor([0, 0, 1, 2])
CE = -(log(0.7) + log(0.5) + log(0.6) + log(0.1)) / 4


def test_online_label_smoothing_by_hand_over_two_epochs():
    ols = OnlineLabelSmoothing(3, alpha=0.5, smoothing=0.1)
    # epoch 1: S = 0.9 on the diagonal, 0.1 / 2 elsewhere
    soft = [-(0.9 * log(0.7) + 0.05 * log(0.2) + 0.05 * log(0.1)),
            -(0.9 * log(0.5) + 0.05 * log(0.3) + 0.05 * log(0.2)),
            -(0.05 * log(0.2) + 0.9 * log(0.6) + 0.05 * log(0.2)),
            -(0.05 * log(0.6) + 0.05 * log(0.3) + 0.9 * log(0.1))]
    loss = ols(PROBS.log(), LABELS)
    assert loss.item() == pytest.approx(0.5 * CE + 0.5 * sum(soft) / 4, rel=1e-5)
    assert ols.counts.tolist() == [2.0, 1.0, 0.0]

    before = {k: v.clone() for k, v in ols.state_dict().items()}
    ols.eval()
    ols(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))                # eval: changes nothing
    assert all(torch.equal(before[k], v) for k, v in ols.state_dict().items())
    ols.train()

    ols.next_epoch()
    expected = torch.tensor([[0.60, 0.2, 0.0],     # column 0: mean of samples 1 and 2
                             [0.25, 0.6, 0.0],     # column 1: sample 3
                             [0.15, 0.2, 0.0]])    # column 2: never correct -> zeros
    torch.testing.assert_close(ols.soft_labels, expected)
    assert ols.counts.sum() == 0 and ols.accumulator.abs().sum() == 0

    # epoch 2: the soft term of the never-correct class vanishes
    soft = [-(0.6 * log(0.7) + 0.25 * log(0.2) + 0.15 * log(0.1)),
            -(0.6 * log(0.5) + 0.25 * log(0.3) + 0.15 * log(0.2)),
            -(0.2 * log(0.2) + 0.6 * log(0.6) + 0.2 * log(0.2)),
            0.0]
    assert ols(PROBS.log(), LABELS).item() == pytest.approx(0.5 * CE + 0.5 * sum(soft) / 4, rel=1e-5)


def test_online_label_smoothing_state_is_in_the_state_dict():
    ols = OnlineLabelSmoothing(3)
    ols(PROBS.log(), LABELS)
    ols.next_epoch()
    ols(PROBS.log(), LABELS)
    state = ols.state_dict()
    assert set(state) == {"soft_labels", "accumulator", "counts"}
    restored = OnlineLabelSmoothing(3)
    restored.load_state_dict(state)
    for name in state:
        torch.testing.assert_close(getattr(restored, name), getattr(ols, name))
    restored.next_epoch()
    ols.next_epoch()
    torch.testing.assert_close(restored.soft_labels, ols.soft_labels)


def test_online_label_smoothing_under_bf16_autocast():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    ols = OnlineLabelSmoothing(4)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        loss = ols(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert layer.weight.grad is not None
    correct = int((logits.argmax(1) == y).sum())
    assert ols.accumulator.dtype == torch.float32 and ols.counts.sum().item() == correct
    torch.testing.assert_close(ols.accumulator.sum(0), ols.counts)     # each column sums probabilities


def test_cross_entropy_label_smooth_by_hand():
    loss = CrossEntropyLabelSmooth(0.1)(PROBS.log(), LABELS)
    # target: 1 - eps + eps/K on the label, eps/K elsewhere
    on, off = 0.9 + 0.1 / 3, 0.1 / 3
    rows = [-(on * log(0.7) + off * (log(0.2) + log(0.1))),
            -(on * log(0.5) + off * (log(0.3) + log(0.2))),
            -(on * log(0.6) + off * (log(0.2) + log(0.2))),
            -(on * log(0.1) + off * (log(0.6) + log(0.3)))]
    assert loss.item() == pytest.approx(sum(rows) / 4, rel=1e-5)


def test_triplet_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    # anchor: (hardest positive, hardest negative) = (3, 1), (3, 2), (sqrt 17, 4), (sqrt 17, 1)
    hinge = [3 - 1 + 0.3, 3 - 2 + 0.3, sqrt(17) - 4 + 0.3, sqrt(17) - 1 + 0.3]
    assert TripletLoss(0.3)(x, y).item() == pytest.approx(sum(hinge) / 4, rel=1e-5)
    # far apart identities: zero loss; scale matters (features are not normalised)
    assert TripletLoss(0.3)(torch.tensor([[0.0], [0.1], [9.0], [9.1]]), y).item() == 0.0
    assert TripletLoss(0.3)(x * 10, y).item() == pytest.approx(sum(10 * h - 2.7 for h in hinge) / 4, rel=1e-5)


def _outputs(B: int = 4, T: int = 3, K: int = 5, D: int = 6):
    """A train-mode output dict whose logits classify every sample correctly."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 2, 2])[:B]
    correct = 4.0 * nn.functional.one_hot(labels, K).float() + 0.1 * torch.randn(B, K, generator=gen)
    return {
        "f_img": torch.randn(B, D, generator=gen, requires_grad=True),
        "f_proj": torch.randn(B, D, generator=gen), "f_tmd": torch.randn(B, D, generator=gen),
        "logits_img": correct.clone().requires_grad_(), "logits_proj": correct + 0.5,
        "logits_tmd": correct * 2, "i2t_logits": correct * 3,
        "frame_logits": correct.unsqueeze(1).expand(B, T, K).clone(),
    }, labels


def test_criterion_total_is_the_weighted_sum():
    cfg = LossConfig(id_weight=0.3, triplet_weight=0.7, i2t_weight=1.5, frame_weight=2.0)
    features = load_config("quick", "x_tfclip").features
    out, labels = _outputs()
    total, terms = Criterion(cfg, features, 5, 3)(out, labels)
    expected = (0.3 * (terms["id_img"] + terms["id_proj"] + terms["id_tmd"])
                + 0.7 * (terms["triplet_img"] + terms["triplet_proj"] + terms["triplet_tmd"])
                + 1.5 * terms["i2t"] + 2.0 * terms["frame"])
    assert terms["loss"] == pytest.approx(total.item()) == pytest.approx(expected, rel=1e-5)
    assert all(isinstance(v, float) for v in terms.values())
    assert terms["acc_img"] == terms["acc_frame"] == terms["acc_i2t"] == 1.0
    # the logged hardest distances are the ones the triplet term is made of
    for name in ("img", "proj", "tmd"):
        x = out[f"f_{name}"].detach()
        dist = torch.cdist(x, x)
        same = labels[:, None] == labels[None, :]
        pos = dist.masked_fill(~same, -1.0).max(1).values
        neg = dist.masked_fill(same, float("inf")).min(1).values
        assert terms[f"dist_pos_{name}"] == pytest.approx(pos.mean().item(), rel=1e-4)
        assert terms[f"dist_neg_{name}"] == pytest.approx(neg.mean().item(), rel=1e-4)
        assert terms[f"triplet_{name}"] == pytest.approx((pos - neg + 0.3).clamp(min=0).mean().item(),
                                                          rel=1e-4, abs=1e-6)
    total.backward()
    assert out["f_img"].grad is not None and out["logits_img"].grad is not None


def test_frame_loss_is_divided_by_t():
    features = load_config("quick", "tf_clip").features
    out, labels = _outputs(T=3)
    _, terms = Criterion(LossConfig(), features, 5, 3)(out, labels)
    video_level = CrossEntropyLabelSmooth(0.1)(out["frame_logits"][:, 0], labels).item()
    assert terms["frame"] == pytest.approx(video_level / 3, rel=1e-5)


def test_criterion_shares_one_ols_state_across_video_heads_and_i2t():
    features = load_config("quick", "x_tfclip").features
    criterion = Criterion(LossConfig(), features, 5, 3)
    out, labels = _outputs()
    criterion(out, labels)
    # every sample is correct: 3 video-level heads + I2T share one state, frames have their own
    assert criterion.id_loss.counts.sum().item() == 4 * 4
    assert criterion.frame_id_loss.counts.sum().item() == 4 * 3
    assert {"id_loss.soft_labels", "id_loss.accumulator", "id_loss.counts",
            "frame_id_loss.soft_labels"} <= set(criterion.state_dict())
    criterion.eval()
    criterion(out, labels)
    assert criterion.id_loss.counts.sum().item() == 16                # eval adds nothing
    criterion.next_epoch()
    assert criterion.id_loss.soft_labels[:, 1].abs().sum() == 0          # class 1 never seen
    assert criterion.id_loss.soft_labels[0, 0] > 0.9

    plain = Criterion(LossConfig(), load_config("quick", "tf_clip").features, 5, 3)
    assert isinstance(plain.id_loss, CrossEntropyLabelSmooth) and not plain.state_dict()
    plain.next_epoch()


def test_criterion_rejects_mismatched_frames():
    out, labels = _outputs(T=3)
    with pytest.raises(ValueError, match="frame_logits"):
        Criterion(LossConfig(), load_config("quick").features, 5, 2)(out, labels)
