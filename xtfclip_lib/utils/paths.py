"""Where relative paths point: the project root, whatever the working directory.

The notebooks' parameters and the presets name their files relative to the project
(``data/synthetic-ag``, ``data/tiny-clip/tiny_clip.pt``, ``results/...``). JupyterLab starts a
kernel in ``notebooks/``, papermill in whichever folder it is called from; without one rule a
notebook run from elsewhere would silently generate a dataset there, or fail on a relative path
without saying relative to what. This module is that one rule: a relative path means the project
root, the checkout folder holding ``pyproject.toml`` and the ``xtfclip_lib`` package.

The command line keeps the usual meaning (relative to the working directory); only code that
asks (the notebooks, through `use_project_root`) resolves against the project root. The output
checks of the command line (`check_output_dir`, `check_output_file`) live here too, so that an
unusable ``--out`` is refused before any long work starts.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "resolve", "use_project_root", "existing", "check_output_dir",
           "check_output_file"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent   # xtfclip_lib/


def project_root() -> Path:
    """The checkout folder holding ``pyproject.toml`` next to the `xtfclip_lib` package.

    An installed (non-editable) package has no checkout; the working directory then stands in,
    so relative paths keep their ordinary meaning there.
    """
    root = _PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file():
        return root
    return Path.cwd().resolve()


def resolve(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """`path` as an absolute path: itself when absolute, else under `root` (the project root)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    return (Path(root) if root is not None else project_root()) / path


def use_project_root() -> Path:
    """Make the project root the working directory and return it.

    Called once at the top of every notebook, so that every relative path it uses, its own
    parameters and those inside a preset (``data.root``, ``model.pretrained``) alike, means the
    project root however the notebook was started (JupyterLab, papermill from any folder, the
    workbook).
    """
    root = project_root()
    os.chdir(root)
    return root


def existing(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` resolved (`resolve`), or FileNotFoundError naming the absolute path looked at.

    `what` says what the file is for, e.g. ``"run folder"``; the message also says what a
    relative path was taken relative to, which a bare relative name does not.
    """
    resolved = resolve(path)
    if not resolved.exists():
        relative = "" if Path(path).expanduser().is_absolute() else \
            f" ({str(path)!r} taken relative to the project root {project_root()})"
        raise FileNotFoundError(f"{what} {resolved} not found{relative}")
    return resolved


def _first_existing_parent(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` as a Path when a folder can be (or is) there; else ValueError naming the culprit.

    Refuses an existing file at `path` or a file where one of its parent folders would be,
    which `mkdir` would only report as a raw FileExistsError after the work was done.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: is an existing file, not a folder; "
                         f"give a folder (new or existing)")
    parent = _first_existing_parent(path)
    if not path.exists() and not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is a file, so no folder can be made below it")
    return path


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` as a Path when a file can be written there; else ValueError naming the culprit.

    Refuses an existing folder at `path` and a file where one of its parent folders would be
    (missing parent folders are fine: writers create them).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is an existing folder; give a file name, "
                         f"e.g. {path / 'submission.csv'}")
    parent = _first_existing_parent(path)
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is a file, so {path.name} cannot be "
                         f"written below it")
    return path
