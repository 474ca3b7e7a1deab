"""The library's progress bars: on the console, never inside a notebook.

A bar drawn by a notebook kernel is saved by papermill as its first frame (``epoch 1/8: 0%``)
and stays frozen in the executed notebook, so the bars of training, feature extraction,
pretraining and data generation are switched off in a Jupyter kernel and drawn as usual on the
console (the command line, the workbook's own process). `enabled` overrides the choice.

A long computation inside a notebook (the tiny CLIP's pretraining) reports its steps through a
`StepCounter` file instead, which the workbook's own bar reads (`read_counter`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from tqdm.std import tqdm as _console_tqdm

from xtfclip_lib.utils.files import atomic_write_text

__all__ = ["enabled", "bars_enabled", "in_notebook_kernel", "tqdm", "StepCounter", "counter_path",
           "read_counter"]

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


def counter_path(output: str | os.PathLike) -> Path:
    """Where the computation writing `output` reports its steps: a hidden sibling ``.NAME.steps``."""
    output = Path(output)
    return output.with_name(f".{output.name}.steps")


class StepCounter:
    """A small file saying ``"<done> <total>"`` steps of a computation, for another process's bar.

    Rewritten (by rename, so a reader never sees half a line) every `every` steps and removed by
    `close`. It only displays: nothing reads it to decide what to compute.
    """

    def __init__(self, path: str | os.PathLike, total: int, every: int = 10):
        self.path, self.total, self.every = Path(path), int(total), max(1, int(every))
        self.update(0)                       # (atomic_write_text makes the folder)

    def update(self, done: int) -> None:
        """Record `done` steps (written when it is a multiple of `every`, or the total)."""
        if done % self.every and done != self.total:
            return
        try:
            atomic_write_text(self.path, f"{int(done)} {self.total}\n")
        except OSError:          # a read-only or vanished folder costs the display, nothing else
            pass

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "StepCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_counter(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(done, total)`` from a `StepCounter` file, or None when there is none (or it is unreadable)."""
    try:
        done, total = (int(v) for v in Path(path).read_text().split())
    except (OSError, ValueError):
        return None
    return (min(done, total), total) if total > 0 else None
