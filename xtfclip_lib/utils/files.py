"""Files that appear complete or not at all: the project's one rule for writing an artefact.

Every artefact a reader may open while it is being made (checkpoints, feature caches, the tiny
CLIP and its sidecar, submissions, the report) is written into a hidden temporary sibling
``.NAME.<random>.tmp`` in the same folder, flushed and fsynced, then renamed onto its name, and
the rename is made durable by syncing the folder. A failure or a kill leaves the previous file
(or none) and at most that temporary, which `checkpoint.remove_stale_temporaries` and the next
write clean up. The synthetic dataset, a whole folder, follows the same idea in `data.synth`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(handle)` on a binary handle to a temporary sibling of `path`, then publish it.

    Readers see the old file or the complete new one, never a part; on any error the temporary
    is removed and the error propagates. Makes the parent folder if needed; returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())          # on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`atomic_write` of `data`."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write` of `text` in `encoding` (UTF-8 by default, whatever the locale)."""
    return atomic_write_bytes(path, text.encode(encoding))


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
