"""The plan of the ablation: which studies the workbook runs and which models they need.

A `Study` is a row of the ablation report (a baseline, a leave-one-out or an add-one-in of one
switch); a `TrainingRun` is a model to train. Test-time switches are studies of the same
trained model, so there are fewer training runs than studies. Pure bookkeeping: nothing here
trains, reads or writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xtfclip_lib.config import SWITCHES, TEST_TIME_SWITCHES

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

