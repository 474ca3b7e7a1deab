"""The workbook: the ordered notebooks, executed headlessly by papermill into one results folder.

``python -m xtfclip_lib workbook --preset tiny --seeds 1 --out results/workbook`` runs

1. ``01_data_exploration``   once (generates the synthetic set when it is missing);
2. ``02_backbone_pretraining`` once (pretrains the tiny CLIP when the preset needs it);
3. ``03_ablations``          once per *trained model* and seed (see `plan_training_runs`);
4. ``04_training``           once: curves and before/after of the full X-TFCLIP model;
5. ``05_retrieval_visualisation`` once, on the X-TFCLIP model;
6. ``06_ablation_report``    once: the report under ``OUT/report/``.

An executed notebook is written to ``OUT/notebooks/``. A finished study is re-used only when what
produced it is the same (`study_key`: the resolved config, the data manifest and the backbone
weights, the rule that keys the feature cache); one made with anything else is retrained, or with
``refuse_stale`` refused before any study trains. So an interrupted workbook resumes where it
stopped, and a changed ``--set`` never reports old numbers under a new label. A failing notebook stops the
workbook with an error naming the notebook and the failing cell; the partially executed copy is
kept beside the others for inspection.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from xtfclip_lib.config import SWITCHES, TEST_TIME_SWITCHES
from xtfclip_lib.utils import atomic_write_text
from xtfclip_lib.utils import counter_path, read_counter
from xtfclip_lib.workbook.report import setting_name

log = logging.getLogger(__name__)

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
BASELINES = ("tf_clip", "x_tfclip")


@dataclass(frozen=True)
class TrainingRun:
    """One model to train: a variant plus at most one flipped training switch."""
    name: str                      # folder name under OUT/studies/
    variant: str                   # "x_tfclip" or "tf_clip"
    overrides: tuple[str, ...] = ()

    def folder(self, out: Path, seed: int) -> Path:
        return Path(out) / "studies" / self.name / f"seed{seed}"


@dataclass(frozen=True)
class Study:
    """A row of the ablation: a trained model evaluated with given test-time switches.

    Test-time switches (METHOD §4 row 7, §6 flip TTA) are evaluated on the same trained models
    with and without, rather than training twice.
    """
    name: str                      # e.g. "x_tfclip", "loo_attention_pooling", "aoi_attention_pooling"
    kind: str                      # "baseline", "leave_one_out" or "add_one_in"
    switch: str | None             # the switch that differs from the baseline, if any
    run: TrainingRun               # the model it evaluates
    test_time: dict = field(default_factory=dict, hash=False, compare=False)  # test-time switch -> bool


def _study_for(variant: str, kind: str, switch: str | None) -> Study:
    on = variant == "x_tfclip"
    prefix = {"baseline": "", "leave_one_out": "loo_", "add_one_in": "aoi_"}[kind]
    name = variant if switch is None else f"{prefix}{switch}"
    test_time = {s: on for s in TEST_TIME_SWITCHES}
    if switch is None:
        run = TrainingRun(variant, variant)
    elif switch in TEST_TIME_SWITCHES:
        run = TrainingRun(variant, variant)              # same trained model as the baseline
        test_time[switch] = not on
    else:
        run = TrainingRun(name, variant, (f"features.{switch}={str(not on).lower()}",))
    return Study(name, kind, switch, run, test_time)


def plan_studies(switches: tuple[str, ...] = SWITCHES) -> list[Study]:
    """tf_clip, x_tfclip, leave-one-out (each switch off in x_tfclip) and add-one-in (each on in tf_clip).

    By default every switch of METHOD §4 and §6: the seven extensions, `grad_centralization`
    (trained) and `flip_tta` (test time, like the soft-biometric mask).
    """
    studies = [_study_for(v, "baseline", None) for v in BASELINES]
    studies += [_study_for("x_tfclip", "leave_one_out", s) for s in switches]
    studies += [_study_for("tf_clip", "add_one_in", s) for s in switches]
    return studies


def plan_training_runs(studies: list[Study]) -> list[TrainingRun]:
    """The distinct models the studies need, in first-use order (baselines first)."""
    runs: list[TrainingRun] = []
    for study in studies:
        if study.run not in runs:
            runs.append(study.run)
    return runs


def test_time_settings(run_name: str, studies: list[Study] | None = None) -> list[dict]:
    """The test-time switch settings that the studies evaluating model `run_name` need."""
    settings: list[dict] = []
    for study in plan_studies() if studies is None else studies:
        if study.run.name == run_name and study.test_time not in settings:
            settings.append(dict(study.test_time))
    if not settings:
        raise KeyError(f"no study evaluates a model named {run_name!r}; "
                       f"known: {sorted({s.run.name for s in plan_studies()})}")
    return settings


def evaluate_study(run_dir: str | Path, settings: list[dict]) -> pd.DataFrame:
    """Score a trained run under each test-time setting; keep per-query arrays for the report.

    Writes ``run_dir/per_query/<setting>.npz`` (per case: ``ap``, ``inp``, ``first_rank`` of the
    valid queries) and returns the per-case table of every setting (``model`` = "trained"), plus
    the untrained model's tables with and without the mask (``model`` = "untrained") when the run
    kept its features. Features are extracted once per flip value (and cached in the run folder);
    the mask only changes the distance matrix.
    """
    from xtfclip_lib import evaluation
    from xtfclip_lib.config import load_config_file
    from xtfclip_lib.engine import (FEATURES_DIR, UNTRAINED, case_distmats, load_features, run_features,
                            score_cases, untrained_key)

    run_dir = Path(run_dir)
    folder = run_dir / "per_query"
    folder.mkdir(exist_ok=True)
    tables = []
    for flip in sorted({s["flip_tta"] for s in settings}):
        run = run_features(run_dir, flip_tta=flip)
        for setting in (s for s in settings if s["flip_tta"] == flip):
            distmats = case_distmats(run.sets, run.lists, run.cases, run.cfg,
                                     mask=setting["soft_biometric_mask"], rerank=False)
            arrays, cases = {}, {}
            for case in run.cases:
                q, g = run.sets[case.query], run.sets[case.gallery]
                cases[case.name] = (distmats[case.name], q.pids, g.pids, q.camids, g.camids)
                result = evaluation.evaluate(*cases[case.name], max_rank=run.cfg.eval.max_rank,
                                             per_query=True)
                valid = result["valid"]
                for key in ("ap", "inp", "first_rank"):
                    arrays[f"{case.name}__{key}"] = np.asarray(result[key])[valid]
            np.savez(folder / f"{setting_name(setting)}.npz", **arrays)
            table = evaluation.evaluate_cases(cases, max_rank=run.cfg.eval.max_rank)
            tables.append(table.assign(model="trained", soft_biometric_mask=setting["soft_biometric_mask"],
                                       flip_tta=flip))
    # The untrained model (same seed, pretrained backbone, fresh heads), with and without the mask,
    # at the run's own flip setting: the "before" of METHOD §8's calibration.
    own = load_config_file(run_dir / "config.yaml")     # as trained: `run.cfg` has the last flip above
    untrained = load_features(run_dir / FEATURES_DIR, UNTRAINED, untrained_key(own, run.lists))
    if untrained is not None:
        for mask in sorted({s["soft_biometric_mask"] for s in settings}):
            table = score_cases(untrained, run.lists, run.cases, own, mask=mask, rerank=False)
            tables.append(table.assign(model="untrained", soft_biometric_mask=mask,
                                       flip_tta=own.features.flip_tta))
    return pd.concat(tables, ignore_index=True)


def platform_table(run_dir: str | Path) -> pd.DataFrame:
    """Aerial-to-ground against ground-to-ground retrieval of the same test identities in the
    same ground gallery (`inference.platform_cases`), without the mask: how much of the task is
    the change of platform (METHOD §8). Uses the run's cached test features."""
    from xtfclip_lib.engine import platform_cases, run_features, score_cases

    run = run_features(run_dir)
    return score_cases(run.sets, run.lists, platform_cases(run.cases), run.cfg, mask=False, rerank=False)


def run_study(preset: str, variant: str, run_name: str, seed: int, run_dir: str | Path, *,
              overrides: list[str] = (), train_overrides: list[str] = ()) -> pd.DataFrame:
    """Train one model of the ablation (or resume / re-use it) and evaluate it for its studies.

    The study is marked done (``done.json``, holding its `study_key`) only after everything was
    written, so a workbook interrupted anywhere in here redoes exactly this study. A folder made
    with another config, data set or backbone (`study_state` "stale") is an error naming what
    differs: its model must not be evaluated under this study's name (the workbook removes such
    folders before it runs this notebook).
    """
    from xtfclip_lib.config import load_config
    from xtfclip_lib.engine import train

    run_dir = Path(run_dir)
    cfg = load_config(preset, variant, [*overrides, *train_overrides, f"train.seed={seed}"])
    key = study_key(cfg)
    state, differences = study_state(run_dir, cfg, key)
    if state == "stale":
        raise StaleStudyError(f"{run_dir} was made with other settings ({'; '.join(differences)}); "
                              f"delete it or choose another folder")
    if not (run_dir / "summary.json").is_file():
        train(cfg, run_dir, resume=(run_dir / "last.pt").is_file())
    threads = torch.get_num_threads()
    if cfg.train.num_threads > 0:        # evaluate with the threads it trained with: same numbers anywhere
        torch.set_num_threads(cfg.train.num_threads)
    try:
        table = evaluate_study(run_dir, test_time_settings(run_name))
    finally:
        torch.set_num_threads(threads)
    table.to_csv(run_dir / "study_metrics.csv", index=False)
    platform_table(run_dir).to_csv(run_dir / "platform_metrics.csv", index=False)
    atomic_write_text(run_dir / "done.json", json.dumps(
        {"run_name": run_name, "variant": variant, "seed": seed, "preset": preset,
         "overrides": list(overrides), "train_overrides": list(train_overrides), "key": key}, indent=2))
    return table


# --------------------------------------------------------------------------------------------
# What produced a study (METHOD §7, "Stale caches"): the feature cache's rule, applied to studies

class StaleStudyError(ValueError):
    """A finished study was made with other settings than the ones asked for; names what differs."""


def data_digest(root: str | Path) -> str:
    """The data manifest's digest by the feature cache's rule (`inference.data_manifest_digest`:
    every tracklet record and each frame file's size and modification time), over every split of
    the dataset at `root`, plus the attribute tables the soft-biometric mask reads. A missing
    root gives ``"missing"``, which matches nothing a finished study recorded."""
    from xtfclip_lib.engine import file_digest
    from xtfclip_lib.data import CASE_DIRS, TRAIN_DIR, scan_split
    from xtfclip_lib.engine import data_manifest_digest

    root = Path(root)
    if not root.is_dir():
        return "missing"
    folders = [root / TRAIN_DIR, *(root / d / side for d in CASE_DIRS.values() for side in ("query", "gallery"))]
    tracklets = [t for folder in folders if folder.is_dir() for t in scan_split(folder)]
    tables = sorted((root / "attributes").glob("*.csv"))
    return "-".join([data_manifest_digest(tracklets), *(file_digest(t, 8) for t in tables)])


def backbone_digest(cfg) -> str:
    """The backbone weights' identity as `inference.untrained_key` takes it: the file's digest
    when `cfg.model.pretrained` is a file, else the setting itself (``""``: random, ``openai``);
    a named file that does not exist (yet) gives ``"missing"``."""
    from xtfclip_lib.engine import file_digest

    weights = cfg.model.pretrained
    if weights in ("", "openai"):
        return weights or "random initialisation"
    return file_digest(weights) if Path(weights).is_file() else "missing"


def study_key(cfg, data: str | None = None) -> dict[str, str]:
    """What a study's numbers are a function of: the resolved config's digest (seed included),
    the data manifest (`data_digest`, or the precomputed `data`) and the backbone weights
    (`backbone_digest`). A finished study is re-used only under an equal key."""
    from xtfclip_lib.config import config_digest

    return {"config": config_digest(cfg), "data manifest": data or data_digest(cfg.data.root),
            "backbone weights": backbone_digest(cfg)}


def study_state(run_dir: str | Path, cfg, key: dict[str, str]) -> tuple[str, list[str]]:
    """Whether the run folder `run_dir` holds this study: ``(state, differences)``.

    States: ``"new"`` (nothing there), ``"done"`` (finished with an equal `study_key`: re-use it),
    ``"partial"`` (interrupted with the same config: the engine resumes it) and ``"stale"``
    (finished or started with anything else). Each difference reads ``"<what>: <old> -> <new>"``,
    `what` being a dotted config key, ``data manifest``, ``backbone weights`` or ``study key``.
    """
    from xtfclip_lib.engine import config_differences
    from xtfclip_lib.config import load_config_file, to_dict

    run_dir = Path(run_dir)
    done, config = run_dir / "done.json", run_dir / "config.yaml"
    if not done.is_file() and not config.is_file():
        return "new", []
    differs = []
    if config.is_file():
        differs += config_differences(to_dict(load_config_file(config)), to_dict(cfg))
    if not done.is_file():
        return ("stale", differs) if differs else ("partial", [])
    recorded = json.loads(done.read_text()).get("key")
    if not isinstance(recorded, dict):
        differs.append("study key: none recorded (made by an older version) -> this version's")
    else:
        differs += [f"{part}: {recorded.get(part)} -> {key[part]}" for part in key
                    if part != "config" and recorded.get(part) != key[part]]
        if not differs and recorded.get("config") != key["config"]:
            differs.append(f"config digest: {recorded.get('config')} -> {key['config']}")
    return ("stale", differs) if differs else ("done", [])


def _what_differs(differences: list[str]) -> list[str]:
    return list(dict.fromkeys(d.split(":")[0] for d in differences))


def skip_summary(states: list[tuple[str, list[str]]]) -> str:
    """One line on what the workbook does with its trained models, e.g. "trained models: 16
    already done with the same config, skipped; 4 retrained (made with other settings:
    train.epochs)". `states` are `study_state` results."""
    count = {s: sum(1 for state, _ in states if state == s) for s in ("done", "stale", "partial", "new")}
    parts = []
    if count["done"]:
        parts.append(f"{count['done']} already done with the same config, skipped")
    if count["stale"]:
        what = _what_differs([d for state, diffs in states if state == "stale" for d in diffs])
        parts.append(f"{count['stale']} retrained (made with other settings: {', '.join(what)})")
    if count["partial"]:
        parts.append(f"{count['partial']} resumed")
    if count["new"]:
        parts.append(f"{count['new']} to train")
    return "trained models: " + ("; ".join(parts) or "none planned")


def refuse_stale_message(stale: list[tuple[Path, list[str]]], out: Path) -> str:
    """The one-line refusal of `--refuse-stale`: how many, the first folder and what differs."""
    folder, differences = stale[0]
    more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
    return (f"{folder.relative_to(out)}{more} were made with other settings "
            f"({'; '.join(differences)}); refusing to retrain them (--refuse-stale): drop the flag "
            f"to retrain, or choose another --out")


TINY_ARCHS = ("tiny-clip", "micro-clip")  # configs shipped in model/configs/, pretrainable offline


def ensure_backbone(cfg, steps: int | None = None) -> dict:
    """Make sure the backbone weights `cfg.model.pretrained` names exist; say where they come from.

    A missing file for a shipped tiny config is pretrained now on the training identities of
    `cfg.data.root` (`pretrain.pretrain_tiny_clip`) for `steps` steps (None: the calibrated
    ``config.PRETRAIN_STEPS``) with ``config.PRETRAIN_THREADS`` threads, so the same data give a
    byte-identical backbone on any machine and load. An existing tiny CLIP whose sidecar records
    another step count or data set is an error naming both, never silently re-used; any other
    missing file is an error naming it. Returns ``source`` plus, for a tiny CLIP, the metrics of
    its pretraining (JSON sidecar).
    """
    from xtfclip_lib.config import PRETRAIN_STEPS

    steps = PRETRAIN_STEPS if steps is None else steps
    source = cfg.model.pretrained
    if source == "":
        return {"source": "random initialisation (no pretrained weights)", "arch": cfg.model.arch}
    if source == "openai":
        return {"source": "OpenAI CLIP weights (downloaded by open_clip)", "arch": cfg.model.arch}
    path = Path(source)
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        if cfg.model.arch not in TINY_ARCHS:
            raise FileNotFoundError(f"model.pretrained={source!r} not found; give a local OpenAI or "
                                    f"open_clip weights file, 'openai', or '' for random init")
        from xtfclip_lib.pretrain import pretrain_tiny_clip
        log.info("pretraining %s into %s (%d steps)", cfg.model.arch, path, steps)
        pretrain_tiny_clip(cfg.data.root, path, arch=cfg.model.arch,
                           image_size=cfg.model.pretrained_image_size, steps=steps,
                           seed=cfg.data.synth_seed)
    info = {"source": f"tiny CLIP pretrained offline ({path})", "arch": cfg.model.arch}
    if sidecar.is_file():
        info.update(json.loads(sidecar.read_text()))
        recorded = info.get("settings", {}).get("steps")
        if cfg.model.arch in TINY_ARCHS and recorded is not None and recorded != steps:
            raise ValueError(f"{path} was pretrained for {recorded} steps, not the {steps} asked for; "
                             f"delete it (and {sidecar.name}) to pretrain again, or ask for {recorded}")
        manifest = Path(cfg.data.root) / "manifest.json"
        made_on = info.get("data", {}).get("manifest_digest")
        if made_on and manifest.is_file() and json.loads(manifest.read_text()).get("digest") != made_on:
            raise ValueError(f"{path} was pretrained on another version of {cfg.data.root} "
                             f"(manifest digest {made_on[:19]}...); delete it (and {sidecar.name}) "
                             f"to pretrain it on the current data")
    return info


def report_context(preset: str, overrides: list[str], out_dir: str | Path) -> dict:
    """What the workbook's numbers are measured on, for the report's opening lines.

    Read from the studies' own resolved configs (``OUT/studies/x_tfclip/seed*/config.yaml``;
    `report.check_same_settings` makes sure the other studies match it), never from the
    arguments, so the label always belongs to the numbers: the preset and the overrides are the
    differences of that config from its shipped preset. `preset` and `overrides`, what the
    caller runs with, only add a warning when they resolve to other settings than the studies'.
    """
    from xtfclip_lib.engine import config_differences
    from xtfclip_lib.config import load_config, load_config_file, to_dict
    from xtfclip_lib.workbook.report import finished_seeds

    seeds_done = finished_seeds(Path(out_dir) / "studies" / "x_tfclip")
    if not seeds_done:
        raise FileNotFoundError(f"the report context needs a finished x_tfclip study under "
                                f"{Path(out_dir) / 'studies' / 'x_tfclip'}")
    cfg = load_config_file(seeds_done[0] / "config.yaml")
    seed = [f"train.seed={cfg.train.seed}"]
    try:
        shipped = to_dict(load_config(cfg.name, "x_tfclip", seed))
        changed = [d.split(": ")[0] for d in config_differences(shipped, to_dict(cfg))]
        flat = _flatten(to_dict(cfg))
        trained_with = [f"{k}={_override_value(flat[k])}" for k in changed]
    except (KeyError, FileNotFoundError):            # a preset file that is not shipped
        trained_with = list(json.loads((seeds_done[0] / "done.json").read_text()).get("overrides", []))
    asked = config_differences(to_dict(load_config(preset, "x_tfclip", [*overrides, *seed])), to_dict(cfg))
    asked = [d for d in asked if not d.startswith("train.num_threads:")]   # the workbook's own share
    if asked:
        more = f" and {len(asked) - 4} more" if len(asked) > 4 else ""
        log.warning("the report describes the studies as trained, not the preset %r and overrides %s "
                    "it was asked for: %s%s", preset, list(overrides), "; ".join(asked[:4]), more)
    manifest = Path(cfg.data.root) / "manifest.json"
    if manifest.is_file():
        args = json.loads(manifest.read_text()).get("args", {})
        dataset = (f"the synthetic aerial-ground video set ({cfg.data.root}: {args.get('num_ids', '?')} "
                   f"identities, seed {args.get('seed', '?')}), not AG-VPReID")
    else:
        dataset = f"the dataset at {cfg.data.root}"
    backbone = {"": "randomly initialised (no pretraining)",
                "openai": "OpenAI CLIP weights"}.get(cfg.model.pretrained,
                                                     f"weights from {cfg.model.pretrained}")
    seeds = {folder.name: len(finished_seeds(folder))
             for folder in sorted((Path(out_dir) / "studies").glob("*")) if folder.is_dir()}
    return {"dataset": dataset, "backbone": f"{cfg.model.arch}, {backbone}",
            "preset": f"{cfg.name} ({cfg.train.epochs} epochs, input {cfg.data.image_size_hw[0]}x"
                      f"{cfg.data.image_size_hw[1]}, T={cfg.data.num_frames}, "
                      f"P x K = {cfg.data.num_ids_per_batch} x {cfg.data.num_tracklets_per_id})",
            "overrides": ", ".join(trained_with) or "none",
            "seeds": seed_counts(seeds),
            "model selection": f"on {cfg.train.select_on} "
                               + ("(held-out training identities)" if cfg.train.select_on == "val"
                                  else "(the test set itself: optimistic)")}


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _override_value(value) -> str:
    """A config value as `--set` writes it (``false``, ``[64, 32]``, ``data/x``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_override_value(v) for v in value) + "]"
    return str(value)


def seed_counts(seeds: dict[str, int]) -> str:
    """Finished seeds per trained model in a few words, grouped by count, e.g. "tf_clip and
    x_tfclip: 3 seeds each; the other 14 trained models: 1 seed each"."""
    groups: dict[int, list[str]] = {}
    for name, count in seeds.items():
        groups.setdefault(count, []).append(name)
    if not groups:
        return "none"
    largest = max(groups, key=lambda n: (len(groups[n]), -n))
    parts = []
    for count in sorted(groups, reverse=True):
        names = groups[count]
        if len(names) > 3 and count == largest:
            who = f"the other {len(names)} trained models" if len(groups) > 1 else f"all {len(names)} trained models"
        else:
            who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        unit = "seed" if count == 1 else "seeds"
        parts.append(f"{who}: {count} {unit}" + (" each" if len(names) > 1 else ""))
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Executing notebooks

class WorkbookError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the partial copy."""


def _ipc_kernel_manager(socket_dir: str | Path):
    """jupyter_client's async kernel manager talking to the kernel over IPC (Unix sockets) instead
    of local TCP: ipykernel >= 7 warns on every start that a TCP kernel runs without encryption,
    one console line per notebook, which breaks the progress bar. IPC is the transport that
    warning recommends; it changes nothing the notebooks compute.

    The sockets live in `socket_dir`, which must belong to this kernel alone: jupyter_client's
    default names them ``kernel-ipc-<n>`` in the working directory, numbered by the first free
    file, so two kernels started at the same moment bind the same sockets and answer each
    other's requests (a notebook then "finishes" while its cells never ran).
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    prefix = str(Path(socket_dir) / "kernel")

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            return prefix

    return IPCKernelManager


def execute_notebook(name: str, output: Path, parameters: dict, notebooks_dir: Path = NOTEBOOK_DIR,
                     cwd: Path | None = None) -> Path:
    """Run ``notebooks_dir/name.ipynb`` with papermill into `output`; raise WorkbookError on failure.

    The kernel runs over IPC (`_ipc_kernel_manager`), its sockets in a temporary folder of its
    own that is removed afterwards, so notebooks run side by side never share one. Papermill
    saves `output` after every cell, which `WorkbookProgress` reads for its bar.
    """
    import tempfile

    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = Path(notebooks_dir) / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found (notebooks_dir={notebooks_dir})")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="xtfclip-kernel-") as sockets:
            papermill.execute_notebook(str(source), str(output), parameters=parameters,
                                       progress_bar=False, kernel_name="python3",
                                       cwd=str(cwd) if cwd else None,
                                       kernel_manager_class=_ipc_kernel_manager(sockets))
    except PapermillExecutionError as exc:
        first_line = (exc.source or "").strip().splitlines()[:1]
        raise WorkbookError(
            f"notebook {name} failed in cell {exc.cell_index} "
            f"({first_line[0] if first_line else 'empty'!s}): {exc.ename}: {exc.evalue}; "
            f"the partially executed notebook is kept at {output}") from None
    return output


@dataclass
class NotebookJob:
    """One notebook execution of the workbook."""
    name: str                  # notebook stem under notebooks/, e.g. "03_ablations"
    output: Path               # the executed copy under OUT/notebooks/
    params: dict
    epochs: int = 0            # training epochs it runs (a study: its config's train.epochs)
    counter: Path | None = None  # a `progress.StepCounter` file it writes (the tiny CLIP's pretraining)
    counter_units: int = 0     # bar steps that counter stands for

    @property
    def label(self) -> str:
        """Name for the progress bar: ``02_backbone_pretraining``, a study ``03 loo_attention_pooling seed0``."""
        parts = self.output.stem.split("__")
        return " ".join([self.name[:2], *parts[1:]]) if len(parts) > 1 else self.name


def _pretraining_counter(cfg, units: int = 10) -> dict:
    """NotebookJob fields for notebook 02 when it will pretrain the tiny CLIP (`ensure_backbone`):
    its step counter, shown as `units` steps of the workbook's bar; nothing when the weights exist."""
    from xtfclip_lib.utils import resolve

    weights = cfg.model.pretrained
    if cfg.model.arch not in TINY_ARCHS or weights in ("", "openai") or resolve(weights).is_file():
        return {}
    return {"counter": counter_path(resolve(weights)), "counter_units": units}


class WorkbookProgress:
    """One progress bar for the whole workbook, in steps: every cell of every notebook to run
    plus every training epoch of every model to train.

    A running notebook's steps are read from disk: its executed copy (papermill saves it after
    each cell, marking the finished ones ``completed``) and, for a study, the rows of its
    ``metrics.jsonl`` (one per epoch done). The bar names the notebooks running now. It only
    displays: nothing the workbook computes depends on it.
    """

    def __init__(self, jobs: list[NotebookJob], notebooks_dir: Path = NOTEBOOK_DIR, bar=None):
        self.jobs: list[NotebookJob] = list(jobs)
        self._cells = {}
        for job in self.jobs:
            source = Path(notebooks_dir) / f"{job.name}.ipynb"
            cells = len(json.loads(source.read_text())["cells"]) if source.is_file() else 1
            self._cells[job.output] = cells + 1          # + the cell papermill injects
        self.running: list[NotebookJob] = []
        self.finished: set[Path] = set()
        self._seen: dict[Path, int] = {}
        self._lock = threading.Lock()
        self.bar = bar if bar is not None else tqdm(desc="workbook", unit="step")
        self.bar.total = self.total

    def steps(self, job: NotebookJob) -> int:
        """Steps of one notebook: its cells (+1 injected), its training epochs and its counter."""
        return self._cells[job.output] + job.epochs + job.counter_units

    @property
    def total(self) -> int:
        return sum(self.steps(job) for job in self.jobs)

    def steps_done(self, job: NotebookJob) -> int:
        """Steps of `job` done so far, from its executed copy and its metrics.jsonl; never more
        than its steps less one until it finished, never fewer than read before."""
        if job.output in self.finished:
            return self.steps(job)
        if job not in self.running:
            return 0
        cells = epochs = 0
        try:
            nb = json.loads(job.output.read_text())
            cells = sum(1 for c in nb["cells"]
                        if c.get("metadata", {}).get("papermill", {}).get("status") == "completed")
        except (OSError, ValueError, KeyError, TypeError):   # not written yet, or being written
            pass
        if job.epochs:
            metrics = Path(job.params["run_dir"]) / "metrics.jsonl"
            try:
                epochs = min(job.epochs, sum(1 for line in metrics.read_text().splitlines() if line.strip()))
            except OSError:
                pass
        if job.counter is not None:
            counted = read_counter(job.counter)
            if counted is not None:
                epochs += job.counter_units * counted[0] // counted[1]
        done = max(self._seen.get(job.output, 0), min(cells + epochs, self.steps(job) - 1))
        self._seen[job.output] = done
        return done

    def drop(self, jobs: list[NotebookJob]) -> None:
        """Leave out jobs that will not run (studies found done)."""
        with self._lock:
            self.jobs = [j for j in self.jobs if j not in jobs]
            self.bar.total = self.total
        self.refresh()

    def start(self, job: NotebookJob) -> None:
        with self._lock:
            self.running.append(job)
        self.refresh()

    def finish(self, job: NotebookJob) -> None:
        with self._lock:
            if job in self.running:
                self.running.remove(job)
            self.finished.add(job.output)
        self.refresh()

    def refresh(self) -> None:
        """Set the bar to the steps done and name the running notebooks."""
        with self._lock:
            self.bar.n = sum(self.steps_done(job) for job in self.jobs)
            self.bar.set_postfix_str("running: " + (", ".join(j.label for j in self.running) or "-"),
                                     refresh=False)
            self.bar.refresh()

    def poll(self, stop: threading.Event, every_s: float = 2.0) -> None:
        """Refresh every `every_s` seconds until `stop` is set (run in a daemon thread)."""
        while not stop.wait(every_s):
            self.refresh()

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def run_workbook(preset: str = "tiny", seeds: int = 1, out: str | Path = "results/workbook", *,
                 spread_seeds: int = 3, overrides: tuple[str, ...] = (), jobs: int = 1,
                 notebooks_dir: Path = NOTEBOOK_DIR, studies: list[Study] | None = None,
                 refuse_stale: bool = False) -> dict:
    """Run every notebook in order; return a summary (stage and notebook timings, report path).

    The summary, also written to ``OUT/workbook.json``, records the wall time of each stage
    (``stages``: data, backbone, the trained models, each closing notebook, total) and of each
    notebook (``elapsed_s``). Times are reported, never used to decide what is computed.

    `seeds` models are trained for every study; the two baselines get `max(seeds, spread_seeds)`
    so that the report always has a seed-to-seed spread to compare differences against.
    `jobs` studies train side by side. Each uses ``train.num_threads`` of the preset (``tiny``
    fixes it at 1, so the numbers are the same on any machine); a preset that leaves it at 0 gets
    an equal share of the CPU threads (small models use two single-threaded processes better than
    one process with two threads).

    Once the data and the backbone exist (after notebook 02), every model's folder is checked
    with `study_state`: a study done with an equal `study_key` is skipped, one made with other
    settings is deleted and retrained, and one line (`skip_summary`) says how many of each. With
    `refuse_stale` a stale study is a StaleStudyError instead, raised before notebook 01 when
    the differences are already visible (a changed config), at the latest before any study trains.
    """
    from xtfclip_lib.config import load_config

    out = Path(out).resolve()
    studies = plan_studies() if studies is None else studies
    runs = plan_training_runs(studies)
    nb_out = out / "notebooks"
    full_model = load_config(preset, "x_tfclip", overrides)
    common = {"preset": preset, "overrides": list(overrides), "out_dir": str(out)}
    before = [NotebookJob("01_data_exploration", nb_out / "01_data_exploration.ipynb", dict(common)),
              NotebookJob("02_backbone_pretraining", nb_out / "02_backbone_pretraining.ipynb", dict(common),
                          **_pretraining_counter(full_model))]
    preset_threads = full_model.train.num_threads
    threads = ([f"train.num_threads={max(1, (os.cpu_count() or 1) // jobs)}"]
               if jobs > 1 and preset_threads == 0 else [])
    ablations, configs = [], {}
    for run in runs:
        num = max(seeds, spread_seeds) if run.name in BASELINES else seeds
        for seed in range(num):
            params = dict(common, overrides=[*overrides, *threads], run_name=run.name,
                          variant=run.variant, train_overrides=list(run.overrides), seed=seed,
                          run_dir=str(run.folder(out, seed)))
            cfg = load_config(preset, run.variant, [*params["overrides"], *run.overrides, f"train.seed={seed}"])
            job = NotebookJob("03_ablations", nb_out / f"03_ablations__{run.name}__seed{seed}.ipynb",
                              params, epochs=cfg.train.epochs)
            ablations.append(job)
            configs[job.output] = cfg
    x_run = TrainingRun("x_tfclip", "x_tfclip").folder(out, 0)
    after = [NotebookJob("04_training", nb_out / "04_training.ipynb", {"run_dir": str(x_run), "out_dir": str(out)}),
             NotebookJob("05_retrieval_visualisation", nb_out / "05_retrieval_visualisation.ipynb",
                         {"run_dir": str(x_run), "out_dir": str(out)}),
             NotebookJob("06_ablation_report", nb_out / "06_ablation_report.ipynb",
                         dict(common, studies_dir=str(out)))]

    def states() -> dict[Path, tuple[str, list[str]]]:
        """`study_state` of every model to train, by its job's output."""
        digests: dict[str, str] = {}
        found = {}
        for job in ablations:
            cfg = configs[job.output]
            if str(cfg.data.root) not in digests:
                digests[str(cfg.data.root)] = data_digest(cfg.data.root)
            found[job.output] = study_state(job.params["run_dir"], cfg,
                                            study_key(cfg, data=digests[str(cfg.data.root)]))
        return found

    def refuse(found: dict[Path, tuple[str, list[str]]], ready: bool) -> None:
        """StaleStudyError on any stale study. Before notebook 02 (not `ready`) a data set or
        backbone still to be made ("-> missing") is judged afterwards, once it exists."""
        stale = [(Path(job.params["run_dir"]), [d for d in found[job.output][1]
                                                if ready or not d.endswith("-> missing")])
                 for job in ablations if found[job.output][0] == "stale"]
        stale = [(folder, differences) for folder, differences in stale if differences]
        if stale:
            raise StaleStudyError(refuse_stale_message(stale, out))

    if refuse_stale and any(Path(j.params["run_dir"]).exists() for j in ablations):
        refuse(states(), ready=False)

    timings: dict[str, float] = {}
    progress = WorkbookProgress([*before, *ablations, *after], notebooks_dir)
    stop = threading.Event()
    poller = threading.Thread(target=progress.poll, args=(stop,), daemon=True)

    def execute(job: NotebookJob) -> None:
        progress.start(job)
        start = time.perf_counter()
        execute_notebook(job.name, job.output, job.params, notebooks_dir, cwd=Path.cwd())
        timings[job.output.stem] = round(time.perf_counter() - start, 1)
        progress.finish(job)

    from tqdm.contrib.logging import logging_redirect_tqdm

    stages: dict[str, float] = {}
    started = time.perf_counter()
    poller.start()
    try:
        with logging_redirect_tqdm():        # log lines print above the bar, never through it
            for job in before:
                execute(job)
            stages["synthetic set and exploration (01)"] = timings[before[0].output.stem]
            stages["backbone pretraining (02)"] = timings[before[1].output.stem]
            found = states()
            if refuse_stale:
                refuse(found, ready=True)
            for job in ablations:
                if found[job.output][0] == "stale":
                    log.warning("%s was made with other settings (%s): retraining it",
                                Path(job.params["run_dir"]).relative_to(out), "; ".join(found[job.output][1]))
                    shutil.rmtree(job.params["run_dir"])
            log.info("%s", skip_summary(list(found.values())))
            todo = [job for job in ablations if found[job.output][0] != "done"]
            progress.drop([job for job in ablations if job not in todo])
            phase = time.perf_counter()
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                futures = [pool.submit(execute, job) for job in todo]
                for future in as_completed(futures):
                    if future.exception() is not None:     # stop at the first failure, naming it
                        for other in futures:
                            other.cancel()
                        raise future.exception()
            stages[f"trained models (03, {len(todo)} of {len(ablations)}, {max(1, jobs)} side by side)"] = round(
                time.perf_counter() - phase, 1)
            for job in after:
                execute(job)
                stages[job.name] = timings[job.output.stem]
            stages["total"] = round(time.perf_counter() - started, 1)
    finally:
        stop.set()
        poller.join()
        progress.close()
    summary = {"preset": preset, "seeds": seeds, "spread_seeds": spread_seeds, "jobs": jobs,
               "studies": [s.name for s in studies], "training_runs": len(runs),
               "skipped_done": len(ablations) - len(todo),
               "retrained_stale": sum(1 for state, _ in found.values() if state == "stale"),
               "stages": stages, "elapsed_s": timings,
               "report": str(out / "report" / "ablation.md")}
    (out / "workbook.json").write_text(json.dumps(summary, indent=2))
    return summary
