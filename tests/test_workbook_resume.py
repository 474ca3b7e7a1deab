"""Which finished studies the workbook re-uses, what it says about them, and its one progress bar.

The notebooks are replaced by a fake `execute_notebook` that runs the real `run_study` with the
engine's training and the evaluation faked, so every rule here is exercised in milliseconds.
"""
from __future__ import annotations

import io
import json
import logging
import os

import nbformat
import pandas as pd
import pytest
from tqdm import tqdm

from xtfclip_lib import workbook
from xtfclip_lib.workbook import executors, notebooks, runner, study
from xtfclip_lib.config import load_config, load_config_file, save_config
from xtfclip_lib.workbook.plan import plan_studies
from xtfclip_lib.workbook.progress import NotebookJob, WorkbookProgress
from xtfclip_lib.workbook.provenance import StaleStudyError, skip_summary, study_key, study_state
from xtfclip_lib.workbook.runner import run_workbook


def _fake_dataset(root):
    """The AG-VPReID layout with a few (unreadable) frames: enough for the data manifest."""
    for split, pid in (("train", 1), ("case1_aerial_to_ground/query", 2), ("case1_aerial_to_ground/gallery", 2),
                       ("case2_ground_to_aerial/query", 3), ("case2_ground_to_aerial/gallery", 3)):
        folder = root / split / f"{pid:04d}" / f"{pid:04d}_C0_T001"
        folder.mkdir(parents=True)
        for frame in range(2):
            (folder / f"{pid:04d}_C0_T001_F{frame:04d}.jpg").write_bytes(b"x" * (frame + 1))
    (root / "attributes").mkdir()
    (root / "attributes" / "train.csv").write_text("id\n1\n")
    return root


@pytest.fixture
def fake_notebooks(monkeypatch):
    """Replace notebook execution and training; return the list of executed notebook stems and
    the list of trained run folders."""
    executed, trained = [], []

    def train(cfg, run_dir, resume=False):
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e + 1}) + "\n"
                                                       for e in range(cfg.train.epochs)))
        (run_dir / "summary.json").write_text("{}")
        trained.append(run_dir.relative_to(run_dir.parents[1]).as_posix())

    def execute(name, output, params, notebooks_dir=None, cwd=None, env=None):
        executed.append(output.stem)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
        if name == "03_ablations":
            workbook.run_study(params["preset"], params["variant"], params["run_name"], params["seed"],
                               params["run_dir"], overrides=params["overrides"],
                               train_overrides=params["train_overrides"])
        return output

    monkeypatch.setattr("xtfclip_lib.engine.train", train)
    monkeypatch.setattr(executors, "execute_notebook", execute)
    monkeypatch.setattr(study, "evaluate_study", lambda run_dir, settings: pd.DataFrame({"R1": [0.5]}))
    monkeypatch.setattr(study, "platform_table", lambda run_dir: pd.DataFrame({"R1": [0.5]}))
    return executed, trained


def _run(out, root, *extra, **kwargs):
    return run_workbook("quick", seeds=1, spread_seeds=1, out=out, studies=plan_studies()[:3],
                        overrides=(f"data.root={root}", *extra), **kwargs)


def test_a_rerun_reuses_only_studies_made_with_the_same_config(tmp_path, fake_notebooks, caplog):
    executed, trained = fake_notebooks
    root = _fake_dataset(tmp_path / "data")
    first = _run(tmp_path / "wb", root)
    assert sorted(trained) == ["loo_bicubic_pos_embed/seed0", "tf_clip/seed0", "x_tfclip/seed0"]
    key = json.loads((tmp_path / "wb/studies/x_tfclip/seed0/done.json").read_text())["key"]
    assert set(key) == {"config", "data manifest", "backbone weights"}
    assert first["skipped_done"] == 0

    trained.clear()
    with caplog.at_level(logging.INFO, logger="xtfclip_lib.workbook"):
        again = _run(tmp_path / "wb", root)
    assert trained == [] and again["skipped_done"] == 3 and again["retrained_stale"] == 0
    assert "trained models: 3 already done with the same config, skipped" in caplog.text
    assert not any(stem.startswith("03_ablations") for stem in executed[-3:])

    # 8-epoch studies asked for with another epoch count: every one is retrained, and says why
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xtfclip_lib.workbook"):
        changed = _run(tmp_path / "wb", root, "train.epochs=2")
    assert len(trained) == 3 and changed["skipped_done"] == 0 and changed["retrained_stale"] == 3
    assert "3 retrained (made with other settings: train.epochs)" in caplog.text
    assert "train.epochs: 1 -> 2" in caplog.text
    assert load_config_file(tmp_path / "wb/studies/x_tfclip/seed0/config.yaml").train.epochs == 2
    recorded = json.loads((tmp_path / "wb/studies/x_tfclip/seed0/done.json").read_text())["key"]
    assert recorded["config"] != key["config"] and recorded["data manifest"] == key["data manifest"]


def test_refuse_stale_names_what_differs_before_anything_runs(tmp_path, fake_notebooks):
    executed, trained = fake_notebooks
    root = _fake_dataset(tmp_path / "data")
    _run(tmp_path / "wb", root)
    executed.clear(), trained.clear()
    with pytest.raises(StaleStudyError, match=r"^studies/tf_clip/seed0 and 2 more were made with other "
                                              r"settings \(train.epochs: 1 -> 4\); refusing"):
        _run(tmp_path / "wb", root, "train.epochs=4", refuse_stale=True)
    assert executed == [] and trained == []          # not even the data notebook ran
    # the same settings under the flag: nothing stale, nothing refused
    assert _run(tmp_path / "wb", root, refuse_stale=True)["skipped_done"] == 3


def test_changed_data_backbone_or_an_old_record_make_a_study_stale(tmp_path, fake_notebooks):
    root = _fake_dataset(tmp_path / "data")
    _run(tmp_path / "wb", root)
    run_dir = tmp_path / "wb/studies/x_tfclip/seed0"
    cfg = load_config("quick", "x_tfclip", [f"data.root={root}", "train.seed=0"])
    assert study_state(run_dir, cfg, study_key(cfg)) == ("done", [])

    frame = next((root / "train").rglob("*.jpg"))
    os.utime(frame, ns=(1, 1))                        # the same bytes, touched: another data manifest
    state, differences = study_state(run_dir, cfg, study_key(cfg))
    assert state == "stale" and [d.split(":")[0] for d in differences] == ["data manifest"]

    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"weights")
    with_backbone = load_config("quick", "x_tfclip", [f"data.root={root}", "train.seed=0",
                                                     f"model.pretrained={weights}"])
    state, differences = study_state(run_dir, with_backbone, study_key(with_backbone))
    assert state == "stale" and "model.pretrained" in differences[0]
    assert study_key(with_backbone)["backbone weights"] != study_key(cfg)["backbone weights"]

    record = json.loads((run_dir / "done.json").read_text())
    del record["key"]
    (run_dir / "done.json").write_text(json.dumps(record))
    state, differences = study_state(run_dir, cfg, study_key(cfg))
    assert state == "stale" and differences[-1].startswith("study key: none recorded")
    with pytest.raises(StaleStudyError, match="seed0 was made with other settings"):
        workbook.run_study("quick", "x_tfclip", "x_tfclip", 0, run_dir, overrides=[f"data.root={root}"])


def test_an_interrupted_study_resumes_unless_its_config_changed(tmp_path):
    cfg = load_config("quick", "x_tfclip", ["train.seed=0"])
    run_dir = tmp_path / "run"
    assert study_state(run_dir, cfg, {}) == ("new", [])
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")         # started, no done.json
    assert study_state(run_dir, cfg, {}) == ("partial", [])
    other = load_config("quick", "x_tfclip", ["train.seed=0", "train.base_lr=0.5"])
    assert study_state(run_dir, other, {})[0] == "stale"


def test_skip_summary_counts_each_kind():
    states = [("done", [])] * 16 + [("stale", ["train.epochs: 8 -> 4"])] * 3 + \
             [("stale", ["data manifest: a -> b"]), ("partial", []), ("new", [])]
    assert skip_summary(states) == ("trained models: 16 already done with the same config, skipped; "
                                    "4 retrained (made with other settings: train.epochs, data manifest); "
                                    "1 resumed; 1 to train")
    assert skip_summary([("new", [])] * 2) == "trained models: 2 to train"


def _notebook(path, cells, completed):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = {i}") for i in range(cells)]
    for cell in nb.cells[:completed]:
        cell.metadata["papermill"] = {"status": "completed"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_progress_counts_cells_and_epochs_of_the_running_notebooks(tmp_path):
    sources = tmp_path / "notebooks"
    _notebook(sources / "02_backbone_pretraining.ipynb", 3, 0)
    _notebook(sources / "03_ablations.ipynb", 3, 0)
    out = tmp_path / "out"
    pretrain = NotebookJob("02_backbone_pretraining", out / "02_backbone_pretraining.ipynb", {})
    study = NotebookJob("03_ablations", tmp_path / "run" / "03_ablations.ipynb",
                        {"run_dir": str(tmp_path / "run"), "run_name": "x_tfclip", "seed": 0}, epochs=10)
    done_study = NotebookJob("03_ablations", tmp_path / "other" / "03_ablations.ipynb",
                             {"run_dir": str(tmp_path / "other"), "run_name": "tf_clip", "seed": 0}, epochs=10)
    bar = tqdm(total=0, file=io.StringIO())
    progress = WorkbookProgress([pretrain, study, done_study], sources, bar=bar)
    assert progress.total == 4 + 14 + 14 and bar.total == 32     # cells + injected cell + epochs
    progress.drop([done_study])
    assert bar.total == 18

    progress.start(pretrain)
    assert "running: 02_backbone_pretraining" in bar.postfix and bar.n == 0
    progress.finish(pretrain)
    progress.start(study)
    assert bar.n == 4 and "running: 03 x_tfclip seed0" in bar.postfix
    _notebook(study.output, 4, 2)                      # papermill saved it: 2 cells completed
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
    progress.refresh()
    assert bar.n == 4 + 2 + 3
    study.output.write_text('{"cells": [')             # being written: keeps what it had read
    progress.refresh()
    assert bar.n == 9

    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n' * 50)
    _notebook(study.output, 4, 4)
    progress.refresh()
    assert bar.n == 17                                 # never full before the notebook finished
    progress.finish(study)
    assert bar.n == bar.total == 18 and "running: -" in bar.postfix


def test_notebooks_run_without_the_kernel_transport_warning(tmp_path, capfd):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print('ran', x)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "98_plain.ipynb")
    output = notebooks.execute_notebook("98_plain", tmp_path / "out" / "98_plain.ipynb", {"x": 2},
                                       notebooks_dir=tmp_path)
    assert "ran 2" in output.read_text()
    captured = capfd.readouterr()
    assert "without encryption" not in captured.err + captured.out
    assert "IPKernelApp" not in captured.err


def test_notebooks_side_by_side_never_share_kernel_sockets(tmp_path, monkeypatch):
    """Two kernels started at the same moment must each run their own cells to the end (with
    jupyter_client's default IPC names in the working directory they bound the same sockets, and
    one notebook 'finished' while its training never ran)."""
    from concurrent.futures import ThreadPoolExecutor

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("tag = 'none'\nout = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import time, pathlib\ntime.sleep(3)"),
                nbformat.v4.new_code_cell("pathlib.Path(out).write_text(tag)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "97_side.ipynb")
    monkeypatch.chdir(tmp_path)

    def run(tag: str) -> Path:
        return notebooks.execute_notebook("97_side", tmp_path / "out" / f"{tag}.ipynb",
                                         {"tag": tag, "out": str(tmp_path / f"{tag}.txt")},
                                         notebooks_dir=tmp_path, cwd=tmp_path)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(run, ["left", "right"]))
    assert (tmp_path / "left.txt").read_text() == "left"
    assert (tmp_path / "right.txt").read_text() == "right"
    assert not list(tmp_path.glob("kernel-ipc-*"))      # no socket left in the working directory


def test_progress_advances_within_pretraining_by_its_step_counter(tmp_path):
    from xtfclip_lib.utils.progress import StepCounter, counter_path
    from xtfclip_lib.workbook.progress import _pretraining_counter
    from xtfclip_lib.config import load_config

    sources = tmp_path / "notebooks"
    _notebook(sources / "02_backbone_pretraining.ipynb", 3, 0)
    weights = tmp_path / "tiny_clip.pt"
    fields = _pretraining_counter(load_config("tiny", "x_tfclip", [f"model.pretrained={weights}"]))
    assert fields == {"counter": counter_path(weights), "counter_units": 10}
    pretrain = NotebookJob("02_backbone_pretraining", tmp_path / "out" / "02.ipynb", {}, **fields)
    bar = tqdm(total=0, file=io.StringIO())
    progress = WorkbookProgress([pretrain], sources, bar=bar)
    assert bar.total == 4 + 10
    progress.start(pretrain)
    with StepCounter(fields["counter"], total=200) as counter:
        counter.update(100)
        progress.refresh()
        assert bar.n == 5                                # half of the pretraining's 10 steps
    weights.write_bytes(b"made")                         # the weights exist: nothing to count
    assert _pretraining_counter(load_config("tiny", "x_tfclip", [f"model.pretrained={weights}"])) == {}
    assert _pretraining_counter(load_config("quick", "x_tfclip")) == {}
