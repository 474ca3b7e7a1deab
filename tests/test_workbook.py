"""The workbook end to end: every notebook executed by papermill on the `quick` preset."""
from __future__ import annotations

import json
import math

import nbformat
import pandas as pd
import pytest

from xtfclip_lib.workbook import ExecutorConfig
from xtfclip_lib.workbook.notebooks import WorkbookError, execute_notebook
from xtfclip_lib.workbook.plan import plan_studies
from xtfclip_lib.workbook.runner import run_workbook


@pytest.fixture(scope="module")
def quick_workbook(quick_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("workbook")
    summary = run_workbook("quick", seeds=1, out=out, spread_seeds=2,
                           overrides=(f"data.root={quick_root}", "train.num_threads=1"))
    return out, summary


def test_every_notebook_runs_and_the_report_has_every_study(quick_workbook):
    out, summary = quick_workbook
    names = {p.stem for p in (out / "notebooks").glob("*.ipynb")}
    assert names == {"01_data_exploration", "02_backbone_pretraining", "04_training",
                     "05_retrieval_visualisation", "06_ablation_report"}
    studies = sorted(p.parent.relative_to(out / "studies").as_posix() for p in out.glob("studies/*/*/03_ablations.ipynb"))
    assert len(studies) == summary["training_runs"] + 2 and "x_tfclip/seed1" in studies   # each in its folder
    table = pd.read_csv(out / "report" / "ablation.csv")
    studies = [s.name for s in plan_studies()]
    assert sorted(table.study.unique()) == sorted(studies)
    assert set(table.case) == {"aerial_to_ground", "ground_to_aerial", "overall"}
    per_row = table.groupby(["study", "case", "metric"]).size()
    assert (per_row == 1).all() and len(per_row) == len(studies) * 3 * 5
    assert table["mean"].map(math.isfinite).all() and table["mean"].between(0, 1).all()
    on_baseline_models = {s.name for s in plan_studies() if s.run.name in ("tf_clip", "x_tfclip")}
    assert on_baseline_models == {"tf_clip", "x_tfclip", "loo_soft_biometric_mask", "aoi_soft_biometric_mask",
                                  "loo_flip_tta", "aoi_flip_tta"}
    assert {"loo_grad_centralization", "aoi_grad_centralization"} <= set(table.study)
    assert (table[table.study.isin(on_baseline_models)].num_seeds == 2).all()
    assert (table[~table.study.isin(on_baseline_models)].num_seeds == 1).all()
    report = (out / "report" / "ablation.md").read_text()
    assert "not taken from the X-TFCLIP paper" in report and "loo_frame_pos_embed" in report
    for figure in ("ranked_aerial_to_ground.png", "embedding_pca.png", "cmc.png", "identity_montage.png"):
        assert (out / "figures" / figure).stat().st_size > 0
    executed = nbformat.read(out / "notebooks" / "06_ablation_report.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    assert (out / "figures" / "training_diagnostics.png").stat().st_size > 0
    # every study keeps the untrained model's scores (with and without the mask) and the
    # ground-to-ground diagnostic; workbook.json records each stage's time
    for variant in ("x_tfclip", "tf_clip"):      # tf_clip: flip off, its studies also score flip on
        study = pd.read_csv(out / "studies" / variant / "seed0" / "study_metrics.csv")
        untrained = study[study.model == "untrained"]
        assert set(untrained.soft_biometric_mask) == {True, False} and len(untrained) == 2 * 3
        assert set(untrained.flip_tta) == {variant == "x_tfclip"}
    platform = pd.read_csv(out / "studies" / "x_tfclip" / "seed0" / "platform_metrics.csv")
    assert list(platform.case[:2]) == ["aerial_to_ground", "ground_to_ground"]
    stages = summary["stages"]
    assert stages["backbone pretraining (02)"] >= 0 and stages["total"] >= sum(
        v for k, v in stages.items() if k != "total") - 1.0
    assert json.loads((out / "workbook.json").read_text())["stages"] == stages


def test_studies_as_submitit_jobs_give_the_same_report(quick_workbook, quick_root, tmp_path):
    """The cluster path end to end: every trained model a job of submitit's local executor (what
    `--executor slurm` does on SLURM, without the queue), the same report to the last digit."""
    out, _ = quick_workbook
    summary = run_workbook("quick", seeds=1, out=tmp_path / "jobs", spread_seeds=2,
                           overrides=(f"data.root={quick_root}", "train.num_threads=1"),
                           executor=ExecutorConfig(kind="slurm", cluster="local", gpus_per_job=0, poll_s=1.0))
    assert summary["executor"] == "slurm" and summary["skipped_done"] == 0
    tracked = json.loads((tmp_path / "jobs" / "slurm" / "jobs.json").read_text())
    assert len(tracked) == summary["training_runs"] + 2            # the baselines' second seeds too
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "jobs" / "report" / "ablation.csv"),
                                  pd.read_csv(out / "report" / "ablation.csv"))
    for folder in tracked:
        assert (tmp_path / "jobs" / folder / "done.json").is_file()
        assert json.loads((tmp_path / "jobs" / folder / "job.json").read_text())["state"] == "done"


def test_a_second_run_skips_finished_studies(quick_workbook, quick_root):
    out, first = quick_workbook
    summary = run_workbook("quick", seeds=1, out=out, spread_seeds=2,
                           overrides=(f"data.root={quick_root}", "train.num_threads=1"))
    assert summary["skipped_done"] == first["training_runs"] + 2   # the baselines' second seeds too
    assert not any(name.startswith("03_ablations") for name in summary["elapsed_s"])


def test_a_failing_notebook_is_named_and_kept(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x: int = 1  # a parameter", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "99_broken.ipynb")
    output = tmp_path / "out" / "99_broken.ipynb"
    with pytest.raises(WorkbookError, match=r"99_broken failed in cell .*ValueError: broken on purpose"):
        execute_notebook("99_broken", output, {"x": 2}, notebooks_dir=tmp_path)
    assert output.is_file() and "broken on purpose" in output.read_text()
    assert json.loads(output.read_text())["cells"]
