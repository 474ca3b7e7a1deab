"""The study plan of the workbook: which models are trained and which rows the report has."""
from __future__ import annotations

import pytest

from xtfclip_lib.config import SWITCHES, TEST_TIME_SWITCHES, load_config
from xtfclip_lib.workbook.notebooks import WorkbookError, execute_notebook
from xtfclip_lib.workbook.plan import plan_studies, plan_training_runs


def test_plan_has_baselines_and_both_ablations_of_every_switch():
    studies = plan_studies()
    names = [s.name for s in studies]
    assert names[:2] == ["tf_clip", "x_tfclip"]
    assert len(names) == 2 + 2 * len(SWITCHES) == 20 and len(set(names)) == 20
    for switch in SWITCHES:
        assert f"loo_{switch}" in names and f"aoi_{switch}" in names


def test_test_time_switch_reuses_the_baseline_model():
    by_name = {s.name: s for s in plan_studies()}
    loo_mask, aoi_mask = by_name["loo_soft_biometric_mask"], by_name["aoi_soft_biometric_mask"]
    assert loo_mask.run == by_name["x_tfclip"].run and aoi_mask.run == by_name["tf_clip"].run
    assert loo_mask.test_time == {"soft_biometric_mask": False, "flip_tta": True}
    assert aoi_mask.test_time == {"soft_biometric_mask": True, "flip_tta": False}
    loo_flip, aoi_flip = by_name["loo_flip_tta"], by_name["aoi_flip_tta"]
    assert loo_flip.run == by_name["x_tfclip"].run and aoi_flip.run == by_name["tf_clip"].run
    assert loo_flip.test_time == {"soft_biometric_mask": True, "flip_tta": False}
    assert aoi_flip.test_time == {"soft_biometric_mask": False, "flip_tta": True}
    runs = plan_training_runs(plan_studies())
    # the mask and flip TTA need no training of their own; grad_centralization does
    assert len(runs) == 2 + 2 * (len(SWITCHES) - len(TEST_TIME_SWITCHES)) == 16
    assert {"loo_grad_centralization", "aoi_grad_centralization"} <= {r.name for r in runs}


def test_each_training_run_flips_exactly_one_switch():
    for study in plan_studies():
        cfg = load_config("quick", study.run.variant, study.run.overrides)
        base = load_config("quick", study.run.variant)
        flipped = [name for name in SWITCHES if getattr(cfg.features, name) != getattr(base.features, name)]
        if study.switch is None or study.switch in TEST_TIME_SWITCHES:
            assert flipped == []
        else:
            assert flipped == [study.switch]
            on_in_study = getattr(cfg.features, study.switch)
            assert on_in_study == (study.kind == "add_one_in")


def test_missing_notebook_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        execute_notebook("nope", tmp_path / "out.ipynb", {}, notebooks_dir=tmp_path)
    assert issubclass(WorkbookError, RuntimeError)
