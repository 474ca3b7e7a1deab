"""Offline contrastive pretraining of a tiny CLIP on person crops with attribute captions.

No pretrained weights can be downloaded offline, yet X-TFCLIP starts from a CLIP image tower
(METHOD §2) and switch 1 (bicubic position-grid resize) only means something when a square grid
was learned first. So the embedded default pretrains a small open_clip CLIP (image and text towers
from ``model/configs/<arch>.json``, open_clip's tokenizer and ``ClipLoss``) on the *training*
identities of an AG-VPReID-layout set, at a square resolution, and saves it as an open_clip
checkpoint that `CLIPBackbone.load_pretrained` reads like OpenAI ViT-B-16 (METHOD §8: the tiny CLIP
must know something about people, but little about who is who across platforms). The captions
come from `xtfclip_lib.pretrain.captions` and `.colours`, the crops and batches from `.crops`, the
model and its measures from `.evaluate`; what is computed is a `PretrainConfig`.

The budget is a number of steps (``PretrainConfig.steps``) at a fixed thread count
(``PretrainConfig.num_threads``), never seconds: the same seed gives a byte-identical checkpoint
on an idle or a busy machine (METHOD §8).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import open_clip
import pandas as pd
import torch
from torch import Tensor

from xtfclip_lib.data import MANIFEST, AGVPReID, Tracklet, load_agvpreid
from xtfclip_lib.pretrain.captions import _Captioner
from xtfclip_lib.pretrain.colours import caption_colours, identity_colours
from xtfclip_lib.pretrain.config import PretrainConfig
from xtfclip_lib.pretrain.crops import _augment, _BatchSampler, _CropBank, _load_crops, _normalise
from xtfclip_lib.pretrain.evaluate import (_check_arch, _create_clip, tracklet_feature_spread,
                                          zero_shot_retrieval)
from xtfclip_lib.utils import atomic_write_bytes, atomic_write_text
from xtfclip_lib.utils import StepCounter, counter_path, tqdm  # console bars; none in a notebook kernel

logger = logging.getLogger(__name__)


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


def _clip_loss(model, loss_fn, images: Tensor, text: Tensor) -> Tensor:
    """images (F, B, 3, S, S) float, text (B, L) -> open_clip's ClipLoss averaged over the F frame sets."""
    F_, B = images.shape[:2]
    image_features = model.encode_image(images.flatten(0, 1), normalize=True).view(F_, B, -1)
    text_features = model.encode_text(text, normalize=True)
    scale = model.logit_scale.exp()
    return torch.stack([loss_fn(image_features[f], text_features, scale) for f in range(F_)]).mean()


class PretrainTimeout(RuntimeError):
    """The optional wall-clock safety ceiling (``max_seconds``) was reached before the step budget."""


def pretrain_tiny_clip(data_root: str | os.PathLike, out_path: str | os.PathLike,
                       config: PretrainConfig = PretrainConfig(), *, max_seconds: float | None = None,
                       overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pretrain a CLIP of `config.arch` contrastively on the training crops of `data_root`; save it.

    Each step draws `config.batch_size` training identities with distinct captions, one tracklet
    each and `frames_per_tracklet` of its crops (`_BatchSampler`); open_clip's ClipLoss pairs
    each of these frame sets with the captions, averaged over the frame sets. Crops are the
    tracklet's frames resized to `image_size` x `image_size` (up to `crops_per_tracklet` evenly
    spaced frames each, decoded once), mildly augmented. Each optional caption phrase
    (DROP_ORDER) is left out with probability `caption_dropout`; `colour_words` says how colours
    are named (`caption_colours`). AdamW with a 5 % warm-up and cosine decay over exactly `steps`
    steps. Every option is a field of `config` (`PretrainConfig`, checked first).

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
    config.validate()
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds={max_seconds!r}; expected a positive number of seconds or None")
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} exists; pass overwrite=True (CLI: --overwrite) to replace it, "
                         "or choose another output path")
    _check_arch(config.arch)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _pretrain(Path(data_root), out_path, config, max_seconds, overwrite, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _settings(config: PretrainConfig, max_seconds: float | None) -> dict[str, Any]:
    """The sidecar's ``settings``: the fields of `config` in order, ``max_seconds`` after ``steps``
    and the torch thread count in use (``torch_threads``) in place of ``num_threads``."""
    settings: dict[str, Any] = {}
    for name, value in dataclasses.asdict(config).items():
        if name != "num_threads":
            settings[name] = value
        if name == "steps":
            settings["max_seconds"] = max_seconds
    settings["torch_threads"] = torch.get_num_threads()
    return settings


@dataclass
class _Run:
    """What one pretraining run works on (`_prepare`): its data, crops, captions, model and sampler."""
    data: AGVPReID
    train_pids: list[int]
    eval_pids: list[int]
    bank: _CropBank             # crops of the pretraining identities
    eval_bank: _CropBank        # crops of the held-out identities
    captioner: _Captioner
    model: torch.nn.Module
    tokenizer: Callable
    sampler: _BatchSampler
    generator: torch.Generator  # draws the augmentation
    loss_fn: open_clip.ClipLoss


def _pretrain(data_root: Path, out_path: Path, config: PretrainConfig, max_seconds: float | None,
              overwrite: bool, progress: bool) -> dict[str, Any]:
    """The body of `pretrain_tiny_clip` (arguments checked, threads set), in its named steps.

    The order of the steps is the order of the random draws (the sampler's probe batch, then the
    training batches and their augmentation), and with it the bytes of the checkpoint.
    """
    start = time.perf_counter()
    settings = _settings(config, max_seconds)
    run = _prepare(data_root, config, progress)
    probe_images, probe_text = run.sampler.draw(0.0)
    probe = (_normalise(probe_images), probe_text)
    before = _measure(run, probe)
    probe_before, zero_shot_before, spread_before = before
    logger.info("before pretraining: probe loss %.3f, zero-shot top-1 %.3f (chance %.3f), mean "
                "pairwise cosine of tracklet features %.3f", probe_before, zero_shot_before["top1"],
                zero_shot_before["chance"], spread_before["mean_cosine"])
    losses, train_start = _train(run, config, out_path, start, max_seconds, progress)
    metrics = _metrics(run, losses, train_start, before, _measure(run, probe))
    _save_checkpoint(out_path, run.model, config, overwrite)
    metrics["seconds"] = time.perf_counter() - start
    _write_sidecar(out_path, data_root, run, settings, metrics)
    logger.info("pretrained %s for %d steps in %.0f s: loss %.3f -> %.3f, zero-shot top-1 %.3f -> %.3f "
                "(chance %.3f); wrote %s", config.arch, metrics["steps"], metrics["seconds"],
                metrics["loss_first"], metrics["loss_last"], zero_shot_before["top1"],
                metrics["zero_shot_after"]["top1"], metrics["zero_shot_after"]["chance"], out_path)
    return metrics


def _prepare(data_root: Path, config: PretrainConfig, progress: bool) -> _Run:
    """Read the training split, hold a few identities out, decode their crops once, caption them
    and build the model and the batch sampler."""
    data = load_agvpreid(data_root)
    train_pids, eval_pids = _split_ids([t.pid for t in data.train], config.num_eval_ids)
    bank = _load_crops([t for t in data.train if t.pid in set(train_pids)], config.image_size,
                       config.crops_per_tracklet, progress)
    eval_bank = _load_crops([t for t in data.train if t.pid in set(eval_pids)], config.image_size,
                            max(1, config.crops_per_tracklet // 2), progress)
    where = {t.name: (b, i) for b in (bank, eval_bank) for i, t in enumerate(b.tracklets)}
    colours = identity_colours(data.train, lambda t: where[t.name][0].numpy_frames(where[t.name][1]))
    colours = caption_colours(colours, config.colour_words)

    model, tokenizer = _create_clip(config.arch, config.image_size, config.seed)
    captioner = _Captioner(data.attributes["train"], colours, int(model.context_length))
    sampler = _BatchSampler(bank, train_pids, captioner, tokenizer, config.batch_size,
                            config.frames_per_tracklet, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = open_clip.ClipLoss()
    logger.info("%d identities pretrain (%d tracklets, %d crops), %d held out; e.g. %r",
                len(train_pids), len(bank.tracklets), len(bank.frames), len(eval_pids),
                captioner.full[(train_pids[0], bank.tracklets[0].camid)])
    return _Run(data, train_pids, eval_pids, bank, eval_bank, captioner, model, tokenizer, sampler,
                generator, loss_fn)


def _measure(run: _Run, probe: tuple[Tensor, Tensor]) -> tuple[float, dict[str, float], dict[str, float]]:
    """(probe loss, zero-shot retrieval, tracklet feature spread) of the model in eval mode."""
    run.model.eval()
    with torch.no_grad():
        probe_loss = _clip_loss(run.model, run.loss_fn, *probe).item()
    zero_shot = zero_shot_retrieval(run.model, run.tokenizer, run.eval_bank, run.captioner.full)
    return probe_loss, zero_shot, tracklet_feature_spread(run.model, run.bank)


def _train(run: _Run, config: PretrainConfig, out_path: Path, start: float, max_seconds: float | None,
           progress: bool) -> tuple[list[float], float]:
    """Exactly `config.steps` optimiser steps; (the loss of each step, when training started).

    Reaching `max_seconds` after `start` raises PretrainTimeout before the next step.
    """
    model, steps, lr = run.model, config.steps, config.lr
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=lr,
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
            images, text = run.sampler.draw(config.caption_dropout)
            images = _augment(images.flatten(0, 1), run.generator).view(images.shape)
            loss = _clip_loss(model, run.loss_fn, images, text)
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
    return losses, train_start


def _metrics(run: _Run, losses: list[float], train_start: float, before: tuple, after: tuple
             ) -> dict[str, Any]:
    """The run's metrics (see `pretrain_tiny_clip`) but ``seconds``; `before`, `after`: `_measure`'s."""
    probe_before, zero_shot_before, spread_before = before
    probe_after, zero_shot_after, spread_after = after
    steps, every = len(losses), max(1, len(losses) // 50)
    return {
        "steps": steps, "train_seconds": time.perf_counter() - train_start,
        "loss_curve": [[i + every, float(np.mean(losses[i:i + every]))] for i in range(0, steps, every)],
        "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
        "probe_loss_before": probe_before, "probe_loss_after": probe_after,
        "zero_shot_before": zero_shot_before, "zero_shot_after": zero_shot_after,
        "spread_before": spread_before, "spread_after": spread_after,
        "num_train_ids": len(run.train_pids), "num_train_tracklets": len(run.bank.tracklets),
        "num_train_crops": int(len(run.bank.frames)), "held_out_ids": run.eval_pids,
        "logit_scale": run.model.logit_scale.exp().item(),
    }


def _save_checkpoint(out_path: Path, model: torch.nn.Module, config: PretrainConfig, overwrite: bool) -> None:
    """Write the open_clip checkpoint ``{"state_dict", "arch", "image_size"}`` atomically."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} appeared while pretraining; pass overwrite=True to replace it")
    checkpoint = {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                  "arch": config.arch, "image_size": config.image_size}
    buffer = io.BytesIO()     # not saved under the file's own name: torch would record that name
    torch.save(checkpoint, buffer)   # (a temporary one holds the PID) inside the archive
    atomic_write_bytes(out_path, buffer.getvalue())


def _write_sidecar(out_path: Path, data_root: Path, run: _Run, settings: dict[str, Any],
                   metrics: dict[str, Any]) -> None:
    """The JSON beside the checkpoint: settings, the data it was made from, example captions, metrics."""
    manifest = data_root / MANIFEST
    sidecar = {
        "arch": settings["arch"], "image_size": settings["image_size"], "checkpoint": out_path.name,
        "settings": settings,
        "data": {"root": str(data_root),
                 "manifest_digest": json.loads(manifest.read_text()).get("digest") if manifest.is_file() else None,
                 "data_digest": _data_digest(data_root, run.data.train, run.data.attributes["train"])},
        "example_captions": [run.captioner.full[(pid, cam)] for pid in run.train_pids[:2]
                             for cam in (0, 2, 4)],
        "metrics": metrics,
    }
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(sidecar, indent=1) + "\n")
