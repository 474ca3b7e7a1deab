"""The workbook: the ordered notebooks, executed headlessly by papermill into one results folder.

``python -m xtfclip_lib workbook --preset tiny --seeds 1 --out results/workbook`` runs

1. ``01_data_exploration``   once (generates the synthetic set when it is missing);
2. ``02_backbone_pretraining`` once (pretrains the tiny CLIP when the preset needs it);
3. ``03_ablations``          once per *trained model* and seed (see `plan_training_runs`);
4. ``04_training``           once: curves and before/after of the full X-TFCLIP model;
5. ``05_retrieval_visualisation`` once, on the X-TFCLIP model;
6. ``06_ablation_report``    once: the report under ``OUT/report/``.

An executed notebook is written to ``OUT/notebooks/``. A study whose ``done.json`` exists is
skipped, so an interrupted workbook resumes where it stopped. A failing notebook stops the
workbook with an error naming the notebook and the failing cell; the partially executed copy is
kept beside the others for inspection.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import SWITCHES, TEST_TIME_SWITCHES
from .report import setting_name

log = logging.getLogger(__name__)

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
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
    from . import evaluation
    from .config import load_config_file
    from .inference import (FEATURES_DIR, UNTRAINED, case_distmats, load_features, run_features,
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
    from .inference import platform_cases, run_features, score_cases

    run = run_features(run_dir)
    return score_cases(run.sets, run.lists, platform_cases(run.cases), run.cfg, mask=False, rerank=False)


def run_study(preset: str, variant: str, run_name: str, seed: int, run_dir: str | Path, *,
              overrides: list[str] = (), train_overrides: list[str] = ()) -> pd.DataFrame:
    """Train one model of the ablation (or resume / re-use it) and evaluate it for its studies.

    The study is marked done (``done.json``) only after everything was written, so a workbook
    interrupted anywhere in here redoes exactly this study.
    """
    from .config import load_config
    from .engine import train

    run_dir = Path(run_dir)
    cfg = load_config(preset, variant, [*overrides, *train_overrides, f"train.seed={seed}"])
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
    (run_dir / "done.json").write_text(json.dumps(
        {"run_name": run_name, "variant": variant, "seed": seed, "preset": preset,
         "overrides": list(overrides), "train_overrides": list(train_overrides)}, indent=2))
    return table


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
    from .config import PRETRAIN_STEPS

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
        from .pretrain import pretrain_tiny_clip
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
    """What the workbook's numbers are measured on, for the report's opening lines."""
    from .config import load_config

    cfg = load_config(preset, "x_tfclip", overrides)
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
    seeds = {}
    for folder in sorted((Path(out_dir) / "studies").glob("*")):
        seeds[folder.name] = len(list(folder.glob("seed*/done.json")))
    return {"dataset": dataset, "backbone": f"{cfg.model.arch}, {backbone}",
            "preset": f"{preset} ({cfg.train.epochs} epochs, input {cfg.data.image_size_hw[0]}x"
                      f"{cfg.data.image_size_hw[1]}, T={cfg.data.num_frames}, "
                      f"P x K = {cfg.data.num_ids_per_batch} x {cfg.data.num_tracklets_per_id})",
            "overrides": ", ".join(overrides) or "none",
            "seeds": ", ".join(f"{k}: {v}" for k, v in seeds.items()) or "none",
            "model selection": f"on {cfg.train.select_on} "
                               + ("(held-out training identities)" if cfg.train.select_on == "val"
                                  else "(the test set itself: optimistic)")}


# --------------------------------------------------------------------------------------------
# Executing notebooks

class WorkbookError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the partial copy."""


def execute_notebook(name: str, output: Path, parameters: dict, notebooks_dir: Path = NOTEBOOK_DIR,
                     cwd: Path | None = None) -> Path:
    """Run ``notebooks_dir/name.ipynb`` with papermill into `output`; raise WorkbookError on failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = Path(notebooks_dir) / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found (notebooks_dir={notebooks_dir})")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters,
                                   progress_bar=False, kernel_name="python3",
                                   cwd=str(cwd) if cwd else None)
    except PapermillExecutionError as exc:
        first_line = (exc.source or "").strip().splitlines()[:1]
        raise WorkbookError(
            f"notebook {name} failed in cell {exc.cell_index} "
            f"({first_line[0] if first_line else 'empty'!s}): {exc.ename}: {exc.evalue}; "
            f"the partially executed notebook is kept at {output}") from None
    return output


def run_workbook(preset: str = "tiny", seeds: int = 1, out: str | Path = "results/workbook", *,
                 spread_seeds: int = 3, overrides: tuple[str, ...] = (), jobs: int = 1,
                 notebooks_dir: Path = NOTEBOOK_DIR, studies: list[Study] | None = None) -> dict:
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
    """
    out = Path(out).resolve()
    studies = plan_studies() if studies is None else studies
    runs = plan_training_runs(studies)
    nb_out = out / "notebooks"
    common = {"preset": preset, "overrides": list(overrides), "out_dir": str(out)}
    before = [("01_data_exploration", nb_out / "01_data_exploration.ipynb", dict(common)),
              ("02_backbone_pretraining", nb_out / "02_backbone_pretraining.ipynb", dict(common))]
    from .config import load_config
    preset_threads = load_config(preset, "x_tfclip", overrides).train.num_threads
    threads = ([f"train.num_threads={max(1, (os.cpu_count() or 1) // jobs)}"]
               if jobs > 1 and preset_threads == 0 else [])
    ablations = []
    for run in runs:
        num = max(seeds, spread_seeds) if run.name in BASELINES else seeds
        for seed in range(num):
            params = dict(common, overrides=[*overrides, *threads], run_name=run.name,
                          variant=run.variant, train_overrides=list(run.overrides), seed=seed,
                          run_dir=str(run.folder(out, seed)))
            ablations.append(("03_ablations", nb_out / f"03_ablations__{run.name}__seed{seed}.ipynb", params))
    x_run = TrainingRun("x_tfclip", "x_tfclip").folder(out, 0)
    after = [("04_training", nb_out / "04_training.ipynb", {"run_dir": str(x_run), "out_dir": str(out)}),
             ("05_retrieval_visualisation", nb_out / "05_retrieval_visualisation.ipynb",
              {"run_dir": str(x_run), "out_dir": str(out)}),
             ("06_ablation_report", nb_out / "06_ablation_report.ipynb", dict(common, studies_dir=str(out)))]

    todo = [job for job in ablations if not (Path(job[2]["run_dir"]) / "done.json").is_file()]
    skipped = len(ablations) - len(todo)
    timings: dict[str, float] = {}
    bar = tqdm(total=len(before) + len(todo) + len(after), desc="workbook", unit="notebook")

    def execute(job: tuple[str, Path, dict]) -> None:
        name, output, params = job
        start = time.perf_counter()
        execute_notebook(name, output, params, notebooks_dir, cwd=Path.cwd())
        timings[output.stem] = round(time.perf_counter() - start, 1)
        bar.set_postfix_str(output.stem)
        bar.update()

    stages: dict[str, float] = {}
    started = time.perf_counter()
    for job in before:
        execute(job)
    stages["synthetic set and exploration (01)"] = timings[before[0][1].stem]
    stages["backbone pretraining (02)"] = timings[before[1][1].stem]
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
        stages[f"{job[0]}"] = timings[job[1].stem]
    stages["total"] = round(time.perf_counter() - started, 1)
    bar.close()
    summary = {"preset": preset, "seeds": seeds, "spread_seeds": spread_seeds, "jobs": jobs,
               "studies": [s.name for s in studies], "training_runs": len(runs),
               "skipped_done": skipped, "stages": stages, "elapsed_s": timings,
               "report": str(out / "report" / "ablation.md")}
    (out / "workbook.json").write_text(json.dumps(summary, indent=2))
    return summary
