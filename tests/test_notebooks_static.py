"""The committed notebooks, read without running them: valid nbformat v4, stripped, and one
papermill `parameters` cell of typed, commented literals (STYLE §6-§7)."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert "01_data_exploration" in names, f"notebooks found: {names}"


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=nbformat.NO_CONVERT)


def parameter_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_valid_v4_with_python3_kernel_and_title(notebook):
    path, nb = notebook
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path.name
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{path.name}: the first cell must be a markdown title"


def test_committed_without_outputs_or_execution_counts(notebook):
    path, nb = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs; strip them"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


def test_exactly_one_parameters_cell_of_typed_commented_literals(notebook):
    path, nb = notebook
    cells = parameter_cells(nb)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', expected 1"
    assert cells[0].cell_type == "code"
    source = cells[0].source
    tree = ast.parse(source)
    assert tree.body, f"{path.name}: empty parameters cell"
    for statement in tree.body:
        # typed literals only: papermill does not recompute derived values (STYLE §6)
        assert isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name), \
            f"{path.name} line {statement.lineno}: expected 'name: type = literal'"
        ast.literal_eval(statement.value)
    comments = {tok.start[0]: tok.string for tok in
                tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    for statement in tree.body:
        comment = comments.get(statement.lineno)
        assert comment, f"{path.name} line {statement.lineno}: parameter without a trailing comment"
        # papermill --help-notebook cannot parse a line with a second '=' (in the comment)
        assert "=" not in comment, f"{path.name} line {statement.lineno}: '=' in the comment"
