"""The library's progress bars: on the console, never inside a notebook.

A bar drawn by a notebook kernel is saved by papermill as its first frame (``epoch 1/8: 0%``)
and stays frozen in the executed notebook, so the bars of training, feature extraction,
pretraining and data generation are switched off in a Jupyter kernel and drawn as usual on the
console (the command line, the workbook's own process). `enabled` overrides the choice.
"""
from __future__ import annotations

import sys

from tqdm.std import tqdm as _console_tqdm

__all__ = ["enabled", "bars_enabled", "in_notebook_kernel", "tqdm"]

# None: automatic (off in a Jupyter kernel, on elsewhere); True / False: always / never.
enabled: bool | None = None


def in_notebook_kernel() -> bool:
    """Whether this process is a Jupyter (ipykernel) kernel, as JupyterLab and papermill start."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def bars_enabled() -> bool:
    """Whether a library progress bar is drawn now: `enabled`, or automatic when it is None."""
    return (not in_notebook_kernel()) if enabled is None else bool(enabled)


class tqdm(_console_tqdm):
    """`tqdm.std.tqdm`, disabled where `bars_enabled` says no (callers may still disable it)."""

    def __init__(self, *args, disable: bool = False, **kwargs):
        super().__init__(*args, disable=bool(disable) or not bars_enabled(), **kwargs)
