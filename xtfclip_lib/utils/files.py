"""Files that appear complete or not at all: the project's one rule for writing an artefact.

Every artefact a reader may open while it is being made (checkpoints, feature caches, the tiny
CLIP and its sidecar, submissions, the report) is written into a hidden temporary sibling
``.NAME.<random>.tmp`` in the same folder, flushed and fsynced, then renamed onto its name, and
the rename is made durable by syncing the folder. A failure or a kill leaves the previous file
(or none) and at most that temporary, which `checkpoint.remove_stale_temporaries` and the next
write clean up. The synthetic dataset, a whole folder, follows the same idea in `data.synth`.

`exclusive_lock` is the other rule of a shared folder: one writer at a time, and whoever is
refused is told who holds it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "exclusive_lock",
           "LockedError", "pid_alive"]


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


class LockedError(RuntimeError):
    """Another process holds the lock; the message names it (host, pid, command, since when)."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs; a zombie (ended, not yet reaped) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):          # no /proc (or no such process): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:            # alive, under another user
            return True
        return True
    return state not in ("Z", "X")


@contextmanager
def exclusive_lock(path: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """Hold the lock file `path` while the block runs; refuse when another process holds it.

    The file is created exclusively (``O_EXCL``) and names its holder: host, pid, the command
    line and the time it was taken, so a refusal (`LockedError`) says who to wait for. A lock
    left by a process of this host that no longer runs (killed before it could remove it) is
    taken over; one from another host is never guessed dead: the message says to remove it by
    hand when its holder is known to be gone. `purpose` names what the lock guards, for that
    message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                other = {}
            if other.get("host") == holder["host"] and isinstance(other.get("pid"), int) \
                    and not pid_alive(other["pid"]):
                path.unlink(missing_ok=True)        # its holder was killed: take it over
                continue
            raise LockedError(
                f"{path} is held by pid {other.get('pid', '?')} on {other.get('host', '?')} since "
                f"{other.get('since', '?')} ({other.get('command', 'unknown command')}): {purpose}; "
                f"wait for it to finish, or remove {path} if that process is gone") from None
    else:
        raise LockedError(f"{path}: could not take the lock ({purpose})")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(holder))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
