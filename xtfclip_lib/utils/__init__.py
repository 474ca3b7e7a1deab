"""Utilities every part may use: atomic file writes and lock files, project-root paths and progress display.

The ground floor beside `xtfclip_lib.config`: nothing here imports another part of the library.
"""
from __future__ import annotations

from xtfclip_lib.utils import files, paths, progress
from xtfclip_lib.utils.files import (LockedError, atomic_write, atomic_write_bytes, atomic_write_text,
                                     exclusive_lock, fsync_dir, pid_alive)
from xtfclip_lib.utils.paths import (check_output_dir, check_output_file, existing, project_root, resolve,
                                     use_project_root)
from xtfclip_lib.utils.progress import (StepCounter, bars_enabled, counter_path, in_notebook_kernel,
                                        read_counter, tqdm)

__all__ = ["files", "paths", "progress",
           "LockedError", "atomic_write", "atomic_write_bytes", "atomic_write_text", "exclusive_lock", "fsync_dir", "pid_alive",
           "check_output_dir", "check_output_file", "existing", "project_root", "resolve", "use_project_root",
           "StepCounter", "bars_enabled", "counter_path", "in_notebook_kernel", "read_counter", "tqdm"]
