"""The workbook: notebooks executed by papermill into an ablation report.

``runner`` plans the studies, prepares data and backbone and executes the notebooks;
``report`` turns finished studies into the ablation report; ``plots`` draws the figures;
``explore`` holds the data-exploration tables and the notebooks' setup.
"""
from __future__ import annotations

from xtfclip_lib.workbook import explore, plots, report
from xtfclip_lib.workbook.runner import (BASELINES, NOTEBOOK_DIR, Study, TrainingRun, WorkbookError,
                                         ensure_backbone, evaluate_study, execute_notebook, plan_studies,
                                         plan_training_runs, report_context, run_study, run_workbook)

__all__ = ["explore", "plots", "report",
           "BASELINES", "NOTEBOOK_DIR", "Study", "TrainingRun", "WorkbookError", "ensure_backbone",
           "evaluate_study", "execute_notebook", "plan_studies", "plan_training_runs", "report_context",
           "run_study", "run_workbook"]
