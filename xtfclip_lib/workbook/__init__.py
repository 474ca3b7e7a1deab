"""The workbook: notebooks executed by papermill into an ablation report.

The top layer under the command line, one module per step: ``plan`` (the studies and the models
they need), ``prepare`` (the backbone), ``study`` (train and score one model), ``provenance``
(what produced a study, so a finished one is re-used only when nothing changed), ``notebooks``
(papermill), ``progress`` (the one bar), ``executors`` (where the trained models run: the study
job, its settings, this machine), ``cluster`` (SLURM jobs through submitit) and ``runner``
(`run_workbook`, all of it in order).
``report`` turns finished studies into the ablation report, ``context`` says what its numbers
are measured on and ``calibration`` checks them against METHOD §8; ``plots`` draws the figures;
``explore`` holds the data-exploration tables and the notebooks' setup.
"""
from __future__ import annotations

from xtfclip_lib.workbook import calibration, cluster, executors, explore, plots, report
from xtfclip_lib.workbook.context import report_context
from xtfclip_lib.workbook.executors import ExecutorConfig, load_executor_config
from xtfclip_lib.workbook.notebooks import NOTEBOOK_DIR
from xtfclip_lib.workbook.plan import plan_studies
from xtfclip_lib.workbook.prepare import ensure_backbone
from xtfclip_lib.workbook.runner import run_workbook
from xtfclip_lib.workbook.study import run_study

__all__ = ["calibration", "cluster", "executors", "explore", "plots", "report",
           "ExecutorConfig", "NOTEBOOK_DIR", "ensure_backbone", "load_executor_config", "plan_studies",
           "report_context", "run_study", "run_workbook"]
