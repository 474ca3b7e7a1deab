"""Executing one notebook headlessly: papermill, with a kernel of its own over IPC.

A failing notebook is a `WorkbookError` naming the notebook, the failing cell and the partially
executed copy, which is kept for inspection.
"""
from __future__ import annotations

import os
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


class WorkbookError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the partial copy."""


def _ipc_kernel_manager(socket_dir: str | Path, env: dict | None = None):
    """jupyter_client's async kernel manager talking to the kernel over IPC (Unix sockets) instead
    of local TCP: ipykernel >= 7 warns on every start that a TCP kernel runs without encryption,
    one console line per notebook, which breaks the progress bar. IPC is the transport that
    warning recommends; it changes nothing the notebooks compute.

    The sockets live in `socket_dir`, which must belong to this kernel alone: jupyter_client's
    default names them ``kernel-ipc-<n>`` in the working directory, numbered by the first free
    file, so two kernels started at the same moment bind the same sockets and answer each
    other's requests (a notebook then "finishes" while its cells never ran).

    `env` is set in the kernel's environment on top of this process's (papermill offers no way
    to pass it): the devices a study may use, ``CUDA_VISIBLE_DEVICES``.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    prefix = str(Path(socket_dir) / "kernel")

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            return prefix

        async def start_kernel(self, **kw):
            if env:
                kw["env"] = {**kw.get("env", os.environ), **env}
            return await super().start_kernel(**kw)

    return IPCKernelManager


def execute_notebook(name: str, output: Path, parameters: dict, notebooks_dir: Path = NOTEBOOK_DIR,
                     cwd: Path | None = None, env: dict | None = None) -> Path:
    """Run ``notebooks_dir/name.ipynb`` with papermill into `output`; raise WorkbookError on failure.

    The kernel runs over IPC (`_ipc_kernel_manager`), its sockets in a temporary folder of its
    own that is removed afterwards, so notebooks run side by side never share one; `env` is added
    to the kernel's environment. Papermill
    saves `output` after every cell, which `WorkbookProgress` reads for its bar.
    """
    import tempfile

    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = Path(notebooks_dir) / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found (notebooks_dir={notebooks_dir})")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="xtfclip-kernel-") as sockets:
            papermill.execute_notebook(str(source), str(output), parameters=parameters,
                                       progress_bar=False, kernel_name="python3",
                                       cwd=str(cwd) if cwd else None,
                                       kernel_manager_class=_ipc_kernel_manager(sockets, env))
    except PapermillExecutionError as exc:
        first_line = (exc.source or "").strip().splitlines()[:1]
        raise WorkbookError(
            f"notebook {name} failed in cell {exc.cell_index} "
            f"({first_line[0] if first_line else 'empty'!s}): {exc.ename}: {exc.evalue}; "
            f"the partially executed notebook is kept at {output}") from None
    return output
